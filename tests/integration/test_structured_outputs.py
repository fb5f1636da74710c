"""Structured outputs, tool calls and logit_bias through the real application, driven by the official `openai`
client, on the ONNX int4 variant and on the vLLM variant (conftest's vllm_app, shared with the vLLM tests: vLLM takes
minutes to start)."""

from __future__ import annotations

import json

import jsonschema_rs
import openai
import pytest
from pydantic import BaseModel
from tokenizers import Tokenizer

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
ONNX = f"{MODEL}:onnx-int4"
VLLM = f"{MODEL}:vllm"
BACKENDS = [ONNX, VLLM]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "The sum of two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
SENTIMENTS = ["positive", "negative", "neutral"]
REVIEWS = ["I love this phone, the battery lasts for days!", "The screen broke after a week.", "It is a phone."]


class Person(BaseModel):
    name: str
    age: int
    city: str


@pytest.fixture(scope="module")
def client(vllm_app) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vllm_app[0]}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def tokenizer(built_models) -> Tokenizer:
    return Tokenizer.from_file(str(built_models / MODEL / "base" / "tokenizer.json"))


def weather_question() -> list[dict]:
    return [{"role": "user", "content": "What is the weather like in Paris today, in celsius?"}]


@pytest.mark.parametrize("model", BACKENDS)
def test_parse_with_a_pydantic_model_returns_the_object(client, model):
    completion = client.chat.completions.parse(
        model=model, response_format=Person, temperature=0, max_tokens=80,
        messages=[{"role": "user", "content": "Marie is 34 and lives in Lyon. Describe her."}])
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Person)


@pytest.mark.parametrize("model", BACKENDS)
def test_a_json_schema_enum_yields_one_of_its_values(client, model):
    schema = {"type": "object", "properties": {"sentiment": {"enum": SENTIMENTS}}, "required": ["sentiment"],
              "additionalProperties": False}
    for review in REVIEWS:
        completion = client.chat.completions.create(
            model=model, temperature=1.0, max_tokens=30,
            messages=[{"role": "user", "content": f"Sentiment of this review: {review}"}],
            response_format={"type": "json_schema", "json_schema": {"name": "sentiment", "strict": True,
                                                                    "schema": schema}})
        assert json.loads(completion.choices[0].message.content)["sentiment"] in SENTIMENTS


@pytest.mark.parametrize("model", BACKENDS)
def test_a_forced_tool_call_has_arguments_that_validate(client, model):
    completion = client.chat.completions.create(
        model=model, messages=weather_question(), tools=[ADD, WEATHER], temperature=0.7, seed=5, max_tokens=80,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.id and call.type == "function" and call.function.name == "get_weather"
    assert jsonschema_rs.validator_for(WEATHER["function"]["parameters"]).is_valid(json.loads(call.function.arguments))


@pytest.mark.parametrize("model", BACKENDS)
def test_a_streamed_tool_call_reassembles_into_the_same_call(client, model):
    request = {"model": model, "messages": weather_question(), "tools": [ADD, WEATHER], "tool_choice": "required",
               "temperature": 0, "max_tokens": 80}
    whole = client.chat.completions.create(**request).choices[0].message.tool_calls
    with client.chat.completions.stream(**request) as stream:  # the client library's own reassembly
        final = stream.get_final_completion().choices[0]
    assert final.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in final.message.tool_calls] == \
        [(c.function.name, json.loads(c.function.arguments)) for c in whole]


@pytest.mark.parametrize("model", BACKENDS)
def test_logit_bias_minus_100_on_the_greedy_first_token_changes_it(client, model, tokenizer):
    request = {"model": model, "messages": [{"role": "user", "content": "Name a colour."}], "temperature": 0,
               "max_tokens": 1, "logprobs": True}
    first = client.chat.completions.create(**request).choices[0].logprobs.content[0]
    (token,) = tokenizer.encode(bytes(first.bytes).decode(), add_special_tokens=False).ids
    biased = client.chat.completions.create(**request, logit_bias={str(token): -100}).choices[0].logprobs.content[0]
    assert biased.token != first.token


@pytest.mark.parametrize("model", [ONNX])
def test_a_schema_strict_mode_cannot_enforce_is_a_400_naming_the_keyword(client, model):
    schema = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, messages=weather_question(), max_tokens=5, response_format={
            "type": "json_schema", "json_schema": {"name": "tags", "strict": True, "schema": schema}})
    assert "uniqueItems" in refused.value.message and refused.value.body["param"] == "response_format"
