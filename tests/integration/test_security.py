"""API keys, per-key rate limits (also across two routers), structured logs and fuzzing, against the real
application started with keys.

The app serves onnx-int4 and the int8 embedder behind `router: {replicas: 2}`, with five keys: ALPHA (no limit of
its own), BRAVO (3 requests per minute), CHARLIE (120 tokens per minute), PACED and METERED (the two-router tests);
logs go, as JSON lines, one file per Serve replica, to a folder the tests read.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from serving.auth import key_id
from tests.helpers import wait_for
from tests.helpers.apps import app_config, both_routers_answer, routers_that_logged, started_app

pytestmark = pytest.mark.slow

CHAT = "smollm2-135m"
EMBEDDER = "minilm-l6-v2"
ALPHA, BRAVO, CHARLIE = (f"sk-test-{name}-{secrets.token_hex(8)}" for name in ("alpha", "bravo", "charlie"))
WRONG = f"sk-wrong-{secrets.token_hex(8)}"
REQUESTS_PER_MINUTE, TOKENS_PER_MINUTE = 6, 400  # PACED's and METERED's: ~12 short chats (~34 tokens each)
PACED = f"sk-test-paced-{secrets.token_hex(8)}"
METERED = f"sk-test-metered-{secrets.token_hex(8)}"
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def guarded(built_models, tmp_path_factory):
    """The running application with API keys on (serving.launcher.RunningApp); its logs are in logs_of(app)."""
    folder = tmp_path_factory.mktemp("guarded-app")
    keys = folder / "api-keys"
    keys.write_text(f"# test keys\n{ALPHA}\n{BRAVO} requests_per_minute=3\n{CHARLIE} tokens_per_minute=120\n"
                    f"{PACED} requests_per_minute={REQUESTS_PER_MINUTE}\n"
                    f"{METERED} tokens_per_minute={TOKENS_PER_MINUTE}\n")
    server = {"limits": {"max_tokens": 16, "max_n": 2, "max_prompt_tokens": 512, "request_timeout_s": 60},
              "auth": {"api_keys_file": str(keys)}, "logging": {"dir": str(folder / "logs")}}
    config = {**app_config(built_models, [f"{CHAT}:onnx-int4", f"{EMBEDDER}:onnx-int8"], server),
              "router": {"replicas": 2}}
    with started_app(config, folder) as app:
        both_routers_answer(app)
        yield app


def logs_of(app):
    return app.log.parent / "logs"


def client(guarded, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{guarded.url}/v1", api_key=key, max_retries=0, timeout=60)


def http_post(guarded, path: str, body: dict, key: str | None = None, **headers: str) -> httpx.Response:
    if key:
        headers["authorization"] = f"Bearer {key}"
    return httpx.post(f"{guarded.url}{path}", json=body, headers=headers, timeout=60)


# --- listeners -------------------------------------------------------------------------------------


def listening_sockets(root_pid: int) -> list[tuple[str, str, object]]:
    """(process name, tcp or udp, local address) of every socket in the process tree that takes connections or
    datagrams from anyone: TCP in LISTEN, UDP bound without a peer."""
    import psutil

    root = psutil.Process(root_pid)
    found = []
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            for c in process.net_connections(kind="inet"):
                udp = c.type == socket.SOCK_DGRAM
                if (udp and not c.raddr) or c.status == psutil.CONN_LISTEN:
                    found.append((process.name(), "udp" if udp else "tcp", c.laddr))
    return found


def not_on_loopback(sockets: list) -> list:
    return [s for s in sockets if s[2].ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]


def test_every_listening_socket_of_the_application_is_on_loopback(guarded):
    """Ray, Serve's proxy, the router and every replica (including Serve's inter-deployment gRPC servers, see
    serving/loopback.py) listen on 127.0.0.1 only."""
    listening = listening_sockets(guarded.process.pid)
    assert len(listening) > 5, listening  # the GCS, raylet, proxy, router, replicas...
    assert not not_on_loopback(listening), not_on_loopback(listening)


def test_with_the_haproxy_ingress_every_listening_socket_is_on_loopback(built_models, tmp_path):
    """`--haproxy` on loopback: HAProxy's frontend, stats page and Prometheus frontend (which Ray Serve binds on
    every interface, see serving/haproxy_loopback.py), the replicas' direct-ingress ports and the rest of the
    application listen on 127.0.0.1 only, and a request goes through HAProxy."""
    config = app_config(built_models, [f"{CHAT}:onnx-int4"], {})
    with started_app(config, tmp_path, extra_args=("--haproxy",)) as app:
        answer = httpx.post(f"{app.url}/v1/chat/completions", json={"model": CHAT, "messages": HELLO,
                                                                     "max_tokens": 4}, timeout=60)
        listening = listening_sockets(app.process.pid)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] > 0
    port = int(app.url.rsplit(":", 1)[1])
    haproxy = {address.port for name, kind, address in listening if name == "haproxy" and kind == "tcp"}
    assert port in haproxy and len(haproxy) >= 3, listening  # the frontend, the stats page, the metrics frontend
    assert not not_on_loopback(listening), not_on_loopback(listening)


# --- API keys --------------------------------------------------------------------------------------


def test_a_request_without_a_key_is_401_in_openai_shape(guarded):
    response = http_post(guarded, "/v1/chat/completions", {"model": CHAT, "messages": HELLO})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    error = response.json()["error"]
    assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error"
    assert "Bearer" in error["message"]


def test_a_wrong_key_is_refused_and_a_right_one_lets_in(guarded):
    with pytest.raises(openai.AuthenticationError):
        client(guarded, WRONG).models.list()
    with pytest.raises(openai.AuthenticationError):
        client(guarded, WRONG).embeddings.create(model=EMBEDDER, input="x")
    assert any(card.id == CHAT for card in client(guarded, ALPHA).models.list())
    answer = client(guarded, ALPHA).chat.completions.create(model=CHAT, messages=HELLO, max_tokens=4)
    assert answer.usage.completion_tokens > 0


def test_probes_and_metrics_need_no_key(guarded):
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{guarded.url}{path}", timeout=10).status_code == 200, path


# --- rate limits -----------------------------------------------------------------------------------


def test_requests_per_minute_are_counted_per_key_and_answered_429_with_retry_after(guarded):
    url = f"{guarded.url}/v1/models"
    headers = {"authorization": f"Bearer {BRAVO}"}
    remaining = [httpx.get(url, headers=headers, timeout=10).headers["x-ratelimit-remaining-requests"]
                 for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    refused = httpx.get(url, headers=headers, timeout=10)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 20  # 3 per minute: one back every 20 s
    with pytest.raises(openai.RateLimitError):
        client(guarded, BRAVO).models.list()
    assert client(guarded, ALPHA).models.list()  # another key is not held back


def test_tokens_per_minute_refuse_once_the_used_tokens_reach_the_limit(guarded):
    used, refusal = 0, None
    for _ in range(8):
        try:
            answer = client(guarded, CHARLIE).chat.completions.create(model=CHAT, messages=HELLO, max_tokens=16)
        except openai.RateLimitError as exc:
            refusal = exc
            break
        used += answer.usage.total_tokens
    assert refusal is not None, f"{used} tokens used and never refused"
    assert used >= 100, used  # 120 per minute, refilled by ~2 a second while the requests ran
    assert "tokens per minute" in refusal.message and int(refusal.response.headers["retry-after"]) >= 1


def refusals(guarded, code: str, reason: str) -> float:
    """quantserve_requests_refused_total for (code, reason) on /v1/completions, from the router's /metrics."""
    line = f'quantserve_requests_refused_total{{code="{code}",endpoint="/v1/completions",reason="{reason}"}} '
    text = httpx.get(f"{guarded.url}/metrics", timeout=10).text
    return sum(float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line))


def test_admission_refusals_are_counted_by_reason(guarded):
    """401 and 429 were in no metric before (admission answered them before any route ran)."""
    unauthorized, limited = refusals(guarded, "401", "invalid_api_key"), refusals(guarded, "429", "rate_limit_exceeded")
    http_post(guarded, "/v1/completions", {"model": CHAT, "prompt": "hi", "max_tokens": 1}, key=WRONG)
    assert refusals(guarded, "401", "invalid_api_key") == unauthorized + 1
    answers = [http_post(guarded, "/v1/completions", {"model": CHAT, "prompt": "hi", "max_tokens": 1}, key=BRAVO)
               for _ in range(5)]  # BRAVO may start 3 a minute
    refused = sum(answer.status_code == 429 for answer in answers)
    assert refused > 0 and refusals(guarded, "429", "rate_limit_exceeded") == limited + refused


# --- rate limits across two routers (serving/rate_limits.py: one shared RateLimitStore) -----------------


def headers(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def test_a_keys_requests_per_minute_hold_across_two_routers(guarded):
    started = time.monotonic()
    answers = [httpx.get(f"{guarded.url}/v1/models", headers=headers(PACED), timeout=30) for _ in range(20)]
    refilled = int((time.monotonic() - started) * REQUESTS_PER_MINUTE / 60)  # one request back every 10 s
    admitted = [a for a in answers if a.status_code == 200]
    assert {a.status_code for a in answers} == {200, 429}
    # Per-replica buckets would have let in up to twice the limit (each router its own REQUESTS_PER_MINUTE).
    assert REQUESTS_PER_MINUTE <= len(admitted) <= REQUESTS_PER_MINUTE + refilled, [a.status_code for a in answers]
    assert admitted[-1].headers["x-ratelimit-remaining-requests"] == "0"
    request_ids = [a.headers["x-request-id"] for a in answers if "x-request-id" in a.headers]
    assert routers_that_logged(guarded, *request_ids) == 2  # both replicas took the key's requests


def test_tokens_used_through_either_router_count_against_the_key(guarded):
    """Tokens are charged to the store when a request ends, so a key runs out after about TOKENS_PER_MINUTE
    tokens in all, whichever replica served each request (two private buckets would allow about twice that)."""
    started, used, largest, refused = time.monotonic(), 0, 0, False
    body = {"model": CHAT, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}
    for _ in range(30):  # more than two private buckets would let in
        answer = httpx.post(f"{guarded.url}/v1/chat/completions", json=body, headers=headers(METERED), timeout=60)
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
    assert routers_that_logged(guarded, f"key {key_id(METERED)}") == 2  # ~12 requests, each to either replica


# --- logs --------------------------------------------------------------------------------------------


def log_records(logs) -> list[dict]:
    """Every line of every Serve log file, each of which must be one JSON object."""
    records = []
    for path in sorted(logs.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if line.strip():
                records.append(json.loads(line))
    return records


def test_logs_are_json_lines_carrying_the_request_id_the_client_gets(guarded):
    request_id = f"test-{secrets.token_hex(6)}"
    response = http_post(guarded, "/v1/chat/completions", {"model": CHAT, "messages": HELLO, "max_tokens": 2,
                                                          "user": "ada"}, key=ALPHA, **{"x-request-id": request_id})
    assert response.status_code == 200 and response.headers["x-request-id"] == request_id
    mine = lambda: [r for r in log_records(logs_of(guarded)) if r.get("request_id") == request_id]  # noqa: E731
    wait_for(lambda: len(mine()) >= 2, 15)
    messages = " | ".join(r["message"] for r in mine())
    assert "user 'ada'" in messages, messages
    assert key_id(ALPHA) in messages, messages  # who asked, by key id


def refusals_logged(app) -> int:
    return sum(record["message"].startswith("refused ") for record in log_records(logs_of(app)))


def test_no_key_appears_in_any_log_or_metric(guarded):
    before = refusals_logged(guarded)
    http_post(guarded, "/v1/completions", {"model": CHAT, "prompt": "hi", "max_tokens": 2}, key=WRONG)
    assert wait_for(lambda: refusals_logged(guarded) > before, 15), "the refused request was never logged"
    haystacks = [path.read_text(errors="replace") for path in logs_of(guarded).glob("*.log")]
    haystacks.append(httpx.get(f"{guarded.url}/metrics", timeout=10).text)
    assert len(haystacks) > 1
    for secret in (ALPHA, BRAVO, CHARLIE, PACED, METERED, WRONG):
        assert not any(secret in text for text in haystacks), "a key leaked into the logs or metrics"


# --- fuzzing -----------------------------------------------------------------------------------------


def test_fuzzing_the_openapi_schema_finds_no_server_error_and_no_nonconforming_response(guarded, tmp_path):
    """Schemathesis generates valid and invalid requests for every /v1 operation from /openapi.json (bounded:
    examples per operation, total time, no shrinking) and checks each response."""
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", f"{guarded.url}/openapi.json",
        "--header", f"Authorization: Bearer {ALPHA}", "--include-path-regex", "^/v1/",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                    "response_schema_conformance,negative_data_rejection",
        "--max-examples", "8", "--max-time", "40", "--no-shrink", "--max-failures", "5", "--seed", "20261201",
        "--workers", "1", "--request-timeout", "60", "--generation-database", "none", "--no-color",
        "--report", "junit", "--report-dir", str(tmp_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "generated" in result.stdout  # it did test cases
