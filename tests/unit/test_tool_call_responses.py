"""Tool calls in responses (serving.responses): a whole answer carries `tool_calls` and finish_reason "tool_calls",
and the streamed chunks, reassembled by the openai library's own stream state, give the same calls and content."""

import json

import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from serving.chat_constraints import ChatConstraints
from serving.engines.base import GenerationOutput
from serving.responses import ChunkWriter, chat_response

TOOLS = [{"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}]
CALLS = ('<tool_call>[\n{"name": "add", "arguments": {"a": 1, "b": 2}},\n'
         '{"name": "add", "arguments": {"a": 3, "b": 4}}\n]</tool_call>')


def outputs_of(text: str, size: int) -> list[GenerationOutput]:
    """The text in pieces of `size` characters, as an engine streams it; the last one finished."""
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    return [GenerationOutput(text=piece, token_ids=[0], prompt_tokens=5, completion_tokens=k + 1,
                             finish_reason="stop" if k == len(pieces) - 1 else None) for k, piece in enumerate(pieces)]


def reassembled(constraints: ChatConstraints, text: str, size: int):
    writer = ChunkWriter("chatcmpl-1", "m", chat=True, include_usage=False, constraints=constraints)
    state = ChatCompletionStreamState(input_tools=TOOLS)
    for event in [*writer.first(1), *(writer.chunk(0, o) for o in outputs_of(text, size))]:
        state.handle_chunk(ChatCompletionChunk.model_validate(json.loads(event.decode().removeprefix("data: "))))
    return state.get_final_completion().choices[0]


def whole(constraints: ChatConstraints, text: str):
    return chat_response("chatcmpl-1", "m", [GenerationOutput(text=text, token_ids=[0], prompt_tokens=5,
                                                              completion_tokens=9, finish_reason="stop")],
                         constraints).choices[0]


@pytest.mark.parametrize("text", [CALLS, f"Adding. {CALLS}", "No call here."])
@pytest.mark.parametrize("size", [1, 7, 1000])
def test_streamed_calls_reassemble_into_the_whole_answer(text, size):
    constraints = ChatConstraints.from_request(None, TOOLS, None, True)
    answer, streamed = whole(constraints, text), reassembled(constraints, text, size)
    assert streamed.finish_reason == answer.finish_reason
    assert (streamed.message.content or None) == (answer.message.content or None)
    calls = [(c.function.name, json.loads(c.function.arguments)) for c in answer.message.tool_calls or []]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in streamed.message.tool_calls or []] == calls


def test_an_answer_with_calls_has_ids_and_finishes_with_tool_calls():
    answer = whole(ChatConstraints.from_request(None, TOOLS, "required", True), CALLS)
    assert answer.finish_reason == "tool_calls" and answer.message.content is None
    assert [json.loads(c.function.arguments) for c in answer.message.tool_calls] == [{"a": 1, "b": 2}, {"a": 3, "b": 4}]
    assert len({c.id for c in answer.message.tool_calls}) == 2


def test_without_tools_the_text_is_the_content():
    answer = whole(ChatConstraints(), CALLS)
    assert answer.message.content == CALLS and answer.message.tool_calls is None and answer.finish_reason == "stop"
