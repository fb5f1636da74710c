"""Two router replicas and one key: the key's rate limits hold overall, not once per replica (serving/rate_limits.py,
the shared RateLimitStore). The app serves onnx-int4 behind `router: {replicas: 2}`; its JSON logs, one file per
replica, show that both routers took the key's requests."""

from __future__ import annotations

import secrets
import time

import httpx
import pytest

from tests.helpers import wait_for
from tests.helpers.apps import app_config, started_app

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
        assert wait_for(lambda: routers_that_logged(app, "/health") == 2 or not ping(app), 120), \
            "the second router replica never answered"
        yield app


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
