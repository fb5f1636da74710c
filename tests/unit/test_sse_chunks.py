"""serving/responses.py's SSE chunks: serialised once (the envelope made once per stream, each event's choices by
pydantic), they carry what the protocol's chunk models dumped to JSON carry."""

from __future__ import annotations

import json

import pytest

from serving import protocol as p
from serving.engines.base import GenerationOutput, TokenLogprob
from serving.responses import ChunkWriter

LOGPROB = TokenLogprob(token=" é", logprob=-0.5, token_bytes=b" \xc3\xa9", top=((" é", -0.5), (" e", -1.5)))


def data(event: bytes) -> dict:
    text = event.decode()
    assert text.startswith("data: ") and text.endswith("\n\n")
    return json.loads(text.removeprefix("data: "))


def output(finish_reason: str | None = None) -> GenerationOutput:
    return GenerationOutput(text=" é", token_ids=[7], prompt_tokens=4, completion_tokens=1,
                            finish_reason=finish_reason, logprobs=[LOGPROB])


@pytest.mark.parametrize("chat", [True, False])
def test_each_event_is_the_protocol_chunk_as_json(chat: bool) -> None:
    writer = ChunkWriter("id-1", "smollm2-135m", chat, include_usage=True, logprobs=True)
    events = [*writer.first(1), writer.chunk(0, output()), writer.chunk(0, output("stop")), *writer.last()]
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [data(event) for event in events[:-1]]
    model = p.ChatCompletionChunk if chat else p.CompletionResponse
    for chunk in chunks:
        assert chunk == json.loads(model.model_validate(chunk).model_dump_json())  # nothing missing, nothing extra
        assert (chunk["id"], chunk["model"], chunk["created"]) == ("id-1", "smollm2-135m", writer.created)
    choice = chunks[-2]["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert (choice["delta"]["content"] if chat else choice["text"]) == " é"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 1,
                                                                   "total_tokens": 5, "prompt_tokens_details": None}
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


@pytest.mark.parametrize(("cached", "details"), [(3, {"cached_tokens": 3}), (None, None)])
def test_usage_says_how_many_prompt_tokens_the_prefix_cache_supplied(cached, details) -> None:
    """As OpenAI's `usage.prompt_tokens_details.cached_tokens`; null where the backend has no prefix cache."""
    from dataclasses import replace

    from serving.responses import outputs_usage

    writer = ChunkWriter("id-1", "smollm2-135m", True, include_usage=True)
    first, last = replace(output(), cached_tokens=cached), replace(output("stop"), completion_tokens=2)
    events = [writer.chunk(0, first), writer.chunk(0, last), *writer.last()]
    assert data(events[-2])["usage"]["prompt_tokens_details"] == details
    whole = outputs_usage([first.followed_by(last)])
    assert (whole.prompt_tokens_details.model_dump() if whole.prompt_tokens_details else None) == details
