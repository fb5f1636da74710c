"""What the real application (the `serving_app` fixture) answers when things go wrong, over raw HTTP:
OpenAI's error body with the right status (never a 500), health and readiness, and a client that
disconnects in the middle of a stream."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from tokenizers import Tokenizer

from serving.engines.chat_template import ChatTemplate
from tests.helpers import wait_for
from tests.helpers.apps import REQUEST_TIMEOUT_SECONDS

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
FP32 = f"{MODEL}:onnx-fp32"
CONTEXT = 1024  # serve.max_context of the chat variants in the test config (tests.helpers.apps.serving_test_config)
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def http(serving_app: str):
    with httpx.Client(base_url=serving_app, timeout=120) as client:
        yield client


def assert_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    """OpenAI's error shape with the expected status; returns the `error` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    if param is not None:
        assert error["param"] == param, error
    return error


def chat_body(**fields) -> dict:
    return {"model": MODEL, "messages": HELLO, "max_tokens": 4, **fields}


# --- client errors ----------------------------------------------------------------------------------


def test_unknown_model_is_404(http):
    error = assert_error(http.post("/v1/chat/completions", json=chat_body(model="no-such-model")), 404, "model")
    assert "no-such-model" in error["message"]
    assert_error(http.post("/v1/embeddings", json={"model": "no-such-model", "input": "x"}), 404, "model")


@pytest.mark.parametrize(("param", "value"), [("temperature", 5), ("top_p", 0), ("n", 0), ("max_tokens", -1),
                                              ("messages", [])])
def test_invalid_parameter_is_400_naming_it(http, param, value):
    error = assert_error(http.post("/v1/chat/completions", json=chat_body(**{param: value})), 400, param)
    assert error["type"] == "invalid_request_error"


def test_missing_field_is_400(http):
    assert_error(http.post("/v1/chat/completions", json={"messages": HELLO}), 400, "model")


def test_bad_json_is_400(http):
    response = http.post("/v1/chat/completions", content=b'{"model": "smollm2-135m", "messages": [',
                         headers={"content-type": "application/json"})
    assert_error(response, 400)


def test_unknown_route_is_404_in_openai_shape(http):
    assert_error(http.get("/v1/no-such-route"), 404)


def test_embedding_model_on_chat_is_400(http):
    assert_error(http.post("/v1/chat/completions", json=chat_body(model="minilm-l6-v2")), 400, "model")


def test_chat_model_on_embeddings_is_400(http):
    assert_error(http.post("/v1/embeddings", json={"model": MODEL, "input": "x"}), 400, "model")


def long_messages(models_dir) -> tuple[list[dict], int]:
    """A chat prompt over the context, and its token count."""
    messages = [{"role": "user", "content": "word " * (CONTEXT + 100)}]
    folder = models_dir / MODEL / "onnx-int4"
    text = ChatTemplate.from_folder(folder).render(messages)
    tokens = len(Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text, add_special_tokens=False).ids)
    assert tokens > CONTEXT
    return messages, tokens


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_longer_than_context_is_400_with_counts(http, built_models, stream):
    messages, tokens = long_messages(built_models)
    error = assert_error(http.post("/v1/chat/completions", json=chat_body(messages=messages, stream=stream)), 400)
    numbers = re.findall(r"\d+", error["message"])
    assert str(CONTEXT) in numbers and str(tokens) in numbers, error["message"]
    assert error["code"] == "context_length_exceeded"


def test_completion_prompt_longer_than_context_is_400(http):
    body = {"model": MODEL, "prompt": "word " * (CONTEXT + 100), "max_tokens": 4}
    error = assert_error(http.post("/v1/completions", json=body), 400, "prompt")
    assert str(CONTEXT) in error["message"]


def test_max_tokens_over_the_context_is_400(http):
    error = assert_error(http.post("/v1/chat/completions", json=chat_body(max_tokens=CONTEXT)), 400, "max_tokens")
    assert str(CONTEXT) in error["message"]


def test_variant_without_replica_or_fallback_is_503_with_retry_after(http):
    response = http.post("/v1/chat/completions", json=chat_body(model=f"{MODEL}:gptq-int4"))
    assert_error(response, 503)
    assert int(response.headers["retry-after"]) > 0


# --- health and readiness ---------------------------------------------------------------------------


def test_health_is_up(http):
    response = http.get("/health")
    assert response.status_code == 200


def test_ready_is_200_when_every_model_can_be_answered_and_lists_each_variant(http):
    """Before, /ready was 503 while any variant had no replica, though each model's default variant answered."""
    response = http.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["ready"] is True and body["models"] == {MODEL: True, "minilm-l6-v2": True}
    for live in (FP32, f"{MODEL}:onnx-int4", "minilm-l6-v2:onnx-int8"):
        assert body["variants"][live] is True and body["states"][live] == "running", live
    for idle in (f"{MODEL}:onnx-int8", f"{MODEL}:gptq-int4", "minilm-l6-v2:onnx-fp32"):
        assert body["variants"][idle] is False and body["states"][idle] == "not_deployed", idle


# --- client disconnect ------------------------------------------------------------------------------


def replica_metric(http, name: str, variant: str) -> float:
    """Sum over the variant's replicas of a replica metric, from the router's /metrics."""
    pattern = re.compile(rf'^{name}\{{[^}}]*variant="{variant}"[^}}]*\}} (\S+)$', re.MULTILINE)
    values = pattern.findall(http.get("/metrics").text)
    assert values, f"{name} for {variant} is not in /metrics"
    return sum(float(v) for v in values)


def test_disconnect_frees_the_slot(http, serving_app):
    running = lambda: replica_metric(http, "quantserve_replica_running_requests", "onnx-fp32")  # noqa: E731
    generated = lambda: replica_metric(http, "quantserve_replica_generation_tokens_total", "onnx-fp32")  # noqa: E731
    in_flight = lambda: replica_metric(http, "quantserve_requests_in_flight", "onnx-fp32")  # noqa: E731
    http.post("/v1/completions", json={"model": FP32, "prompt": "hi", "max_tokens": 1})  # the gauge exists now
    assert wait_for(lambda: running() == 0, 20), "onnx-fp32 is busy before the test"
    before, in_flight_before = generated(), in_flight()
    # Counting never meets an end-of-sequence token: only the disconnect can end this request early.
    body = {"model": FP32, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.Client(base_url=serving_app, timeout=60) as client, client.stream("POST", "/v1/completions",
                                                                                json=body) as response:
        assert response.status_code == 200
        data = (line for line in response.iter_lines() if line.startswith("data: "))
        assert [next(data), next(data)]
        assert wait_for(lambda: running() >= 1, 10), "the stream never showed in the replica's running batch"
        assert in_flight() == in_flight_before + 1
    assert wait_for(lambda: running() == 0, 20), "the slot was not freed after the client disconnected"
    assert wait_for(lambda: in_flight() == in_flight_before, 10), "the request stayed in flight after it left"
    # The counters are published with the running gauge: once they show this stream's tokens, they are final.
    assert wait_for(lambda: generated() - before >= 2, 10), "the streamed tokens were never counted"
    assert generated() - before < 400  # aborted, not run to max_tokens


# --- limits (server.limits in the config; defaults here) ---------------------------------------------


def test_a_body_over_the_size_limit_is_413(http):
    body = chat_body(messages=[{"role": "user", "content": "x" * 1_100_000}])
    error = assert_error(http.post("/v1/chat/completions", json=body), 413)
    assert "1000000" in error["message"] and error["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", chat_body(max_tokens=5000), "max_tokens"),
        ("/v1/chat/completions", chat_body(max_completion_tokens=5000), "max_completion_tokens"),
        ("/v1/chat/completions", chat_body(n=9), "n"),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "stop": [f"s{i}" for i in range(9)]}, "stop"),
        ("/v1/embeddings", {"model": "minilm-l6-v2", "input": ["text"] * 257}, "input"),
    ],
)
def test_requests_over_a_limit_are_400_naming_it(http, path, body, param):
    error = assert_error(http.post(path, json=body), 400, param)
    assert error["code"] == "limit_exceeded" and "at most" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_past_the_timeout_ends_with_504_and_frees_its_slot(http, stream):
    running = lambda: replica_metric(http, "quantserve_replica_running_requests", "onnx-fp32")  # noqa: E731
    assert wait_for(lambda: running() == 0, 30), "onnx-fp32 is busy before the test"
    # ~900 tokens of counting take far longer than the test config's request timeout.
    body = {"model": FP32, "prompt": "1, 2, 3, 4, 5, 6,", "max_tokens": 900, "temperature": 0, "stream": stream}
    started = time.monotonic()
    response = http.post("/v1/completions", json=body)
    elapsed = time.monotonic() - started
    if stream:
        assert response.status_code == 200  # the headers were sent: the timeout arrives as an error event
        events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
        assert '"code":"timeout"' in events[-2].replace(" ", "") and events[-1] == "[DONE]"
    else:
        assert assert_error(response, 504)["code"] == "timeout"
    assert REQUEST_TIMEOUT_SECONDS - 1 < elapsed < REQUEST_TIMEOUT_SECONDS + 20
    assert wait_for(lambda: running() == 0, 20), "the timed-out request kept its slot"



# --- hostile input: every case is a 4xx in OpenAI's shape, never a 5xx -----------------------------------------


@pytest.mark.parametrize(
    ("case", "content", "status", "param"),
    [
        ("bad json", b'{"model": "smollm2-135m", "messages": [', 400, None),
        ("not an object", b"[1, 2, 3]", 400, None),
        ("empty body", b"", 400, None),
        ("invalid utf-8", b'{"model": "smollm2-135m", "prompt": "\xff\xfe\xfa"}', 400, None),
        ("lone surrogate", b'{"model": "smollm2-135m", "prompt": "\\ud800", "max_tokens": 2}', 400, "prompt"),
        ("wrong type", b'{"model": "smollm2-135m", "prompt": "hi", "max_tokens": "16"}', 400, "max_tokens"),
        ("bool as int", b'{"model": "smollm2-135m", "prompt": "hi", "echo": 0}', 400, "echo"),
        ("negative number", b'{"model": "smollm2-135m", "prompt": "hi", "max_tokens": -5}', 400, "max_tokens"),
        ("huge number", b'{"model": "smollm2-135m", "prompt": "hi", "max_tokens": 1e400}', 400, "max_tokens"),
        ("huge integer", b'{"model": "smollm2-135m", "prompt": "hi", "n": 100000000000000000000}', 400, "n"),
        ("infinite temperature", b'{"model": "smollm2-135m", "prompt": "hi", "temperature": 1e999}', 400,
         "temperature"),
        ("empty prompt", b'{"model": "smollm2-135m", "prompt": [""]}', 400, "prompt"),
        ("null model", b'{"model": null, "prompt": "hi"}', 400, "model"),
    ],
)
def test_hostile_completion_bodies_are_4xx(http, case, content, status, param):
    response = http.post("/v1/completions", content=content, headers={"content-type": "application/json"})
    assert_error(response, status, param)


def test_a_1_mb_prompt_is_refused_by_size_before_it_is_parsed(http):
    body = json.dumps({"model": MODEL, "prompt": "word " * 210_000, "max_tokens": 2}).encode()
    assert len(body) > 1_000_000
    error = assert_error(http.post("/v1/completions", content=body, headers={"content-type": "application/json"}),
                         413)
    assert error["code"] == "request_too_large"


def test_unknown_fields_are_400_naming_them(http):
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2, "colour": "blue"})
    assert assert_error(response, 400, "colour")["code"] == "unsupported_parameter"
