"""Every request field honoured or refused, against the real application (the session's `serving_app`): explicit
nulls mean the default, fields this server does not implement and unknown ones are a 400 naming them, non-text
message parts a 400 naming their type; through raw HTTP and the official client.

On the previous code each of these failed: a null temperature, n, stream, logprobs or penalty was a 400, and
`tools`, `response_format`, `logit_bias`, `suffix`, `best_of`, image parts and unknown fields were accepted and
silently ignored (a 200 with prose)."""

from __future__ import annotations

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
HELLO = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "max_tokens": 6}
OPTIONAL_NULLS = ["top_p", "n", "stream", "stream_options", "stop", "seed", "presence_penalty", "frequency_penalty",
                  "user", "logit_bias", "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos"]
TOOL = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object", "properties": {}}}}


@pytest.fixture(scope="module")
def http(serving_app: str):
    with httpx.Client(base_url=serving_app, timeout=120) as client:
        yield client


def refusal(response: httpx.Response, param: str) -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported_parameter" and error["param"] == param, error
    assert error["type"] == "invalid_request_error" and param.split(".")[0] in error["message"]
    return error


def test_explicit_nulls_mean_the_defaults_in_chat(http):
    nulls = dict.fromkeys([*OPTIONAL_NULLS, "logprobs", "top_logprobs", "max_completion_tokens", "tools",
                           "tool_choice", "response_format", "store", "service_tier", "safety_identifier"])
    plain = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, **GREEDY})
    nulled = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, **GREEDY, **nulls})
    assert plain.status_code == nulled.status_code == 200, nulled.text
    assert nulled.json()["choices"][0]["message"] == plain.json()["choices"][0]["message"]
    assert len(nulled.json()["choices"]) == 1 and nulled.json()["choices"][0]["logprobs"] is None


def test_explicit_nulls_mean_the_defaults_in_completions_max_tokens_included(http):
    nulls = dict.fromkeys([*OPTIONAL_NULLS, "logprobs", "echo", "best_of", "suffix", "temperature", "max_tokens"])
    response = http.post("/v1/completions", json={"model": MODEL, "prompt": "1, 2, 3,", **nulls})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 16  # OpenAI's default max_tokens for completions


@pytest.mark.parametrize(("field", "value"), [
    ("functions", [TOOL["function"]]), ("function_call", "auto"), ("audio", {"voice": "alloy", "format": "wav"}),
    ("modalities", ["text", "audio"]),
    ("prediction", {"type": "content", "content": "Paris"}), ("web_search_options", {}), ("store", True),
    ("service_tier", "priority"), ("reasoning_effort", "low"),
])
def test_chat_fields_this_server_does_not_implement_are_400_naming_them(http, field, value):
    body = {"model": MODEL, "messages": HELLO, **GREEDY, field: value}
    refusal(http.post("/v1/chat/completions", json=body), field)


@pytest.mark.parametrize(("field", "value"), [("suffix", " and that is all."), ("best_of", 3)])
def test_completion_fields_this_server_does_not_implement_are_400_naming_them(http, field, value):
    body = {"model": MODEL, "prompt": "Once upon", **GREEDY, field: value}
    refusal(http.post("/v1/completions", json=body), field)


def test_best_of_one_and_store_false_ask_for_nothing_unusual(http):
    assert http.post("/v1/completions", json={"model": MODEL, "prompt": "Once", "best_of": 1, **GREEDY}).is_success
    assert http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, "store": False,
                                                   "service_tier": "auto", **GREEDY}).is_success


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"])
def test_an_unknown_field_is_400_naming_it(http, path):
    body = {"model": "minilm-l6-v2", "input": "x"} if "embeddings" in path else (
        {"model": MODEL, "messages": HELLO} if "chat" in path else {"model": MODEL, "prompt": "x"})
    error = refusal(http.post(path, json={**body, "colour": "blue"}), "colour")
    assert error["message"] == "Unrecognized request argument supplied: colour"


@pytest.mark.parametrize(("part", "kind"), [
    ({"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}, "image_url"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "input_audio"),
    ({"type": "file", "file": {"file_id": "file-1"}}, "file"),
])
def test_a_non_text_message_part_is_400_naming_its_type(http, part, kind):
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]
    error = refusal(http.post("/v1/chat/completions", json={"model": MODEL, "messages": messages}),
                    "messages.0.content")
    assert f"'{kind}'" in error["message"]


def test_text_parts_are_honoured(http):
    parts = [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}]
    as_parts = http.post("/v1/chat/completions", json={"model": MODEL, **GREEDY,
                                                       "messages": [{"role": "user", "content": parts}]})
    as_text = http.post("/v1/chat/completions", json={"model": MODEL, "messages": HELLO, **GREEDY})
    assert as_parts.json()["choices"][0]["message"] == as_text.json()["choices"][0]["message"]


def test_the_official_client_gets_the_refusal_as_a_bad_request(openai_client):
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.chat.completions.create(model=MODEL, messages=HELLO, functions=[TOOL["function"]], **GREEDY)
    assert refused.value.code == "unsupported_parameter" and refused.value.param == "functions"
    with pytest.raises(openai.BadRequestError) as unknown:
        openai_client.completions.create(model=MODEL, prompt="x", extra_body={"guided_json": {}}, **GREEDY)
    assert unknown.value.param == "guided_json"


def test_vllm_extensions_are_honoured(openai_client):
    long = openai_client.completions.create(model=MODEL, prompt="The end.", max_tokens=12, temperature=0,
                                            extra_body={"min_tokens": 12, "ignore_eos": True, "top_k": 5,
                                                        "min_p": 0.05, "repetition_penalty": 1.1})
    assert long.usage.completion_tokens == 12 and long.choices[0].finish_reason == "length"
