"""Two router replicas: one key's rate limits hold overall, not once per replica (serving/rate_limits.py, the shared
RateLimitStore), and SIGTERM drains both routers (serving/serve_cli.py). The apps serve onnx-int4 behind
`router: {replicas: 2}`; their JSON logs, one file per replica, show that both routers took requests.

The SIGTERM test ends its application, so it has one of its own: no test here depends on running order.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time

import httpx
import pytest

from tests.helpers import wait_for
from tests.helpers.apps import app_config, started_app
from tests.helpers.streams import read_stream

pytestmark = pytest.mark.slow

CHAT = "smollm2-135m"
REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE = 6, 400  # ~12 short chats (~34 tokens each)
PACED = f"sk-test-paced-{secrets.token_hex(8)}"  # REQUESTS_PER_MINUTE
METERED = f"sk-test-metered-{secrets.token_hex(8)}"  # TOKENS_PER_MINUTE


@pytest.fixture(scope="module")
def two_routers(built_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("two-routers")
    keys = folder / "api-keys"
    keys.write_text(f"{PACED} requests_per_minute={REQUESTS_PER_MINUTE}\n"
                    f"{METERED} tokens_per_minute={TOKENS_PER_MINUTE}\n")
    server = {"limits": {"max_tokens": 16, "request_timeout_s": 60}, "auth": {"api_keys_file": str(keys)},
              "logging": {"dir": str(folder / "logs")}}
    config = {**app_config(built_models, [f"{CHAT}:onnx-int4"], server), "router": {"replicas": 2}}
    with started_app(config, folder) as app:
        both_routers_answer(app)
        yield app


@pytest.fixture
def draining_routers(built_models, tmp_path_factory):
    """An application of its own (no keys) for the SIGTERM test, which ends it."""
    folder = tmp_path_factory.mktemp("draining-routers")
    server = {"logging": {"dir": str(folder / "logs")}, "drain_timeout_s": 60}
    config = {**app_config(built_models, [f"{CHAT}:onnx-int4"], server), "router": {"replicas": 2}}
    with started_app(config, folder) as app:
        both_routers_answer(app)
        yield app


def both_routers_answer(app) -> None:
    """Until each router replica has answered /health (the proxy routes to a replica once it is up)."""
    assert wait_for(lambda: routers_that_logged(app, "/health") == 2 or not ping(app), 120), \
        "the second router replica never answered"


def ping(app) -> bool:
    return httpx.get(f"{app.url}/health", timeout=10).status_code == 200


def routers_that_logged(app, text: str) -> int:
    """How many router replicas' log files (Serve writes one per replica) hold `text`."""
    logs = app.log.parent / "logs"
    return sum(text in path.read_text(errors="replace") for path in logs.glob("*Router*.log"))


def headers(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_a_keys_requests_per_minute_hold_across_two_routers(two_routers):
    started = time.monotonic()
    answers = [httpx.get(f"{two_routers.url}/v1/models", headers=headers(PACED), timeout=30) for _ in range(20)]
    refilled = int((time.monotonic() - started) * REQUESTS_PER_MINUTE / 60)  # one request back every 10 s
    admitted = [a for a in answers if a.status_code == 200]
    assert {a.status_code for a in answers} == {200, 429}
    # Per-replica buckets would have let in up to twice the limit (each router its own REQUESTS_PER_MINUTE).
    assert REQUESTS_PER_MINUTE <= len(admitted) <= REQUESTS_PER_MINUTE + refilled, [a.status_code for a in answers]
    assert admitted[-1].headers["x-ratelimit-remaining-requests"] == "0"
    assert routers_that_logged(two_routers, "/v1/models") == 2  # both replicas took the key's requests


def test_tokens_used_through_either_router_count_against_the_key(two_routers):
    """Tokens are charged to the store when a request ends, so a key runs out after about TOKENS_PER_MINUTE
    tokens in all, whichever replica served each request (two private buckets would allow about twice that)."""
    started, used, largest, refused = time.monotonic(), 0, 0, False
    body = {"model": CHAT, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    for _ in range(30):  # more than two private buckets would let in
        answer = httpx.post(f"{two_routers.url}/v1/chat/completions", json=body, headers=headers(METERED), timeout=60)
        if answer.status_code == 429:
            refused = True
            break
        assert answer.status_code == 200, answer.text
        tokens = answer.json()["usage"]["total_tokens"]
        used, largest = used + tokens, max(largest, tokens)
    refilled = (time.monotonic() - started) * TOKENS_PER_MINUTE / 60
    assert refused, f"{used} tokens used and never refused"
    # The request that crossed the limit is let in, and one more may start before its charge reaches the store.
    assert used <= TOKENS_PER_MINUTE + 2 * largest + refilled, (used, largest, refilled)
    assert routers_that_logged(two_routers, "/v1/chat/completions") == 2  # ~12 requests, each to either replica


def test_sigterm_drains_every_router_replica_and_waits_for_the_stream_on_either(draining_routers):
    """After SIGTERM every router refuses new requests (draining one replica would leave the other taking half of
    them), and the stream in flight on one of them runs to its end before the application stops."""
    app, events, started = draining_routers, [], threading.Event()
    body = {"model": CHAT, "prompt": "1, 2, 3, 4, 5, 6,", "temperature": 0, "max_tokens": 400, "stream": True}
    reader = threading.Thread(target=read_stream, args=(app.url, body, events, started), daemon=True)
    reader.start()
    assert started.wait(60), "the stream did not start"
    os.kill(app.process.pid, signal.SIGTERM)
    models = lambda: httpx.get(f"{app.url}/v1/models", timeout=10)  # noqa: E731
    assert wait_for(lambda: models().status_code == 503, 20), "new requests were still taken after SIGTERM"
    answers = [models() for _ in range(12)]  # each goes to either replica
    assert [a.status_code for a in answers] == [503] * 12
    assert {a.json()["error"]["code"] for a in answers} == {"shutting_down"}
    assert all(int(a.headers["retry-after"]) > 0 for a in answers)
    refusals = httpx.get(f"{app.url}/metrics", timeout=10).text  # counted by reason, over both routers' files
    assert any(line.startswith("quantserve_requests_refused_total{") and 'reason="shutting_down"' in line
               for line in refusals.splitlines())
    assert events[-1] != "[DONE]", "the stream ended before the refusals were seen; make it longer"
    reader.join(timeout=120)
    assert events[0] == 200 and events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "length"  # it ran to its end, not cut off
    assert app.process.wait(timeout=120) == 0
    assert "quantserve: drained" in app.log_tail(20000)
