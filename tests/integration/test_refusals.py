"""Limits that hold and what is refused or abandoned counted, against the real application (the session's
`serving_app`, request timeout REQUEST_TIMEOUT_SECONDS): a chunked body past the size limit, clients that leave
before and after the first token, embeddings past the model's window and past the request timeout.

On the previous code: a chunked body passed the 413 check (it read only Content-Length); refusals and
disconnects had no counter by reason or stage; an embedding input past the window was cut silently; an
embeddings request had no timeout."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.helpers import wait_for
from tests.helpers.apps import REQUEST_TIMEOUT_SECONDS

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
FP32 = f"{MODEL}:onnx-fp32"
EMBEDDER = "minilm-l6-v2"
WINDOW = 256  # MiniLM's window (pooling.json max_tokens)


@pytest.fixture(scope="module")
def http(serving_app: str):
    with httpx.Client(base_url=serving_app, timeout=120) as client:
        yield client


def counter(http, name: str, **labels: str) -> float:
    """Sum of a counter's samples whose labels include `labels`, from the router's /metrics."""
    total = 0.0
    for line in http.get("/metrics").text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_a_chunked_body_past_the_limit_is_413_and_counted(http):
    before = counter(http, "quantserve_requests_refused_total", code="413", reason="request_too_large")
    prompt = "word " * 220_000  # over 1,000,000 bytes, sent without Content-Length
    payload = json.dumps({"model": MODEL, "prompt": prompt, "max_tokens": 1}).encode()

    def chunks():
        for start in range(0, len(payload), 65536):
            yield payload[start : start + 65536]

    response = http.post("/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text[:300]
    assert response.json()["error"]["code"] == "request_too_large"
    assert counter(http, "quantserve_requests_refused_total", code="413", reason="request_too_large") == before + 1
    small = json.dumps({"model": MODEL, "prompt": "Hi", "max_tokens": 1}).encode()
    assert http.post("/v1/completions", content=iter([small[:5], small[5:]]),
                     headers={"content-type": "application/json"}).status_code == 200


def test_a_refused_field_is_counted_by_reason(http):
    before = counter(http, "quantserve_requests_refused_total", code="400", reason="unsupported_parameter")
    http.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "suffix": "!"})
    assert counter(http, "quantserve_requests_refused_total", code="400", reason="unsupported_parameter") == before + 1


def test_clients_that_leave_are_counted_before_and_after_the_first_token(serving_app, http):
    labels = {"variant": "onnx-fp32", "endpoint": "/v1/completions"}
    early = lambda: counter(http, "quantserve_client_disconnects_total", stage="before_first_token", **labels)  # noqa: E731
    late = lambda: counter(http, "quantserve_client_disconnects_total", stage="after_first_token", **labels)  # noqa: E731
    early_before, late_before = early(), late()
    # A prompt of ~900 tokens takes seconds to prefill on one core: the client gives up first.
    slow = {"model": FP32, "prompt": "one two three " * 300, "max_tokens": 4, "stream": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{serving_app}/v1/completions", json=slow, timeout=httpx.Timeout(120, read=0.3))
    assert wait_for(lambda: early() == early_before + 1, 60), "the early disconnect was not counted"
    counting = {"model": FP32, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 300, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{serving_app}/v1/completions", json=counting, timeout=60) as response:
        events = (line for line in response.iter_lines() if line.startswith("data: "))
        assert [next(events), next(events)]
    assert wait_for(lambda: late() == late_before + 1, 30), "the late disconnect was not counted"
    assert early() == early_before + 1


def long_text(words: int) -> str:
    return " ".join(f"word{i % 50}" for i in range(words))


def test_an_embedding_input_past_the_window_is_400_unless_truncation_is_asked_for(http):
    body = {"model": EMBEDDER, "input": ["short", long_text(400)]}
    refused = http.post("/v1/embeddings", json=body)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "input", refused.text
    assert str(WINDOW) in refused.json()["error"]["message"]
    whole = http.post("/v1/embeddings", json={**body, "truncate_prompt_tokens": -1})
    assert whole.status_code == 200 and whole.json()["usage"]["prompt_tokens"] < 2 * WINDOW
    cut = http.post("/v1/embeddings", json={**body, "input": [long_text(400)], "truncate_prompt_tokens": 10})
    assert cut.json()["usage"]["prompt_tokens"] == 10
    assert cut.json()["data"][0]["embedding"] != whole.json()["data"][1]["embedding"]


def test_embeddings_end_at_the_request_timeout_and_leave_the_replica_free(http, serving_app):
    """Four requests of 256 window-long inputs each: far more than the replica embeds within the timeout."""
    body = {"model": EMBEDDER, "input": [long_text(300)] * 256, "truncate_prompt_tokens": -1}
    started = time.monotonic()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{serving_app}/v1/embeddings", json=body, timeout=180),
                                range(4)))
    elapsed = time.monotonic() - started
    assert {a.status_code for a in answers} <= {200, 504} and 504 in {a.status_code for a in answers}
    assert elapsed < REQUEST_TIMEOUT_SECONDS + 30, elapsed
    assert all(a.json()["error"]["code"] == "timeout" for a in answers if a.status_code == 504)
    quick = time.monotonic()
    assert http.post("/v1/embeddings", json={"model": EMBEDDER, "input": "hello"}).status_code == 200
    assert time.monotonic() - quick < 15, "the timed-out requests' inputs were still being embedded"
