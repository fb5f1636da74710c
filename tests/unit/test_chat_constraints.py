"""serving.chat_constraints: which constraint a chat request's fields ask for, and what is refused."""

import pytest

from serving.chat_constraints import ChatConstraints
from serving.engines.grammar import ConstraintError
from serving.engines.tool_calls import ToolCall

TOOL = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
    "type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}
BLOCK = '<tool_call>[\n{"name": "add", "arguments": {"a": 1}}\n]</tool_call>'


def test_plain_text_asks_for_nothing():
    constraints = ChatConstraints.from_request(None, None, None, True)
    assert constraints.constraint is None and constraints.stream() is None
    assert constraints.answer(BLOCK) == (BLOCK, [])


def test_response_formats_become_json_constraints():
    assert ChatConstraints.from_request({"type": "text"}, None, None, True).constraint is None
    assert ChatConstraints.from_request({"type": "json_object"}, None, None, True).constraint.json_schema
    schema = ChatConstraints.from_request(SCHEMA, None, None, True).constraint.json_schema
    assert schema["properties"] == SCHEMA["json_schema"]["schema"]["properties"]


def test_a_forced_call_is_a_grammar_and_its_text_is_read_as_calls():
    constraints = ChatConstraints.from_request(None, [TOOL], "required", False)
    assert constraints.constraint.lark and constraints.stream() is not None
    assert constraints.answer(BLOCK) == (None, [ToolCall("add", '{"a": 1}')])


def test_auto_leaves_the_output_free_and_none_hides_the_tools():
    auto = ChatConstraints.from_request(None, [TOOL], None, True)
    assert auto.constraint is None and auto.answer(BLOCK)[1] == [ToolCall("add", '{"a": 1}')]
    hidden = ChatConstraints.from_request(None, [TOOL], "none", True)
    assert hidden.answer(BLOCK) == (BLOCK, []) and "<tools>" not in str(hidden.messages([{"role": "user",
                                                                                          "content": "hi"}]))


@pytest.mark.parametrize(("response_format", "tool_choice", "param"), [
    (SCHEMA, "auto", "response_format"),
    ({"type": "xml"}, None, "response_format"),
    ({"type": "json_schema", "json_schema": {"name": "x"}}, None, "response_format"),
    (None, {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
])
def test_what_cannot_be_honoured_is_refused_naming_the_field(response_format, tool_choice, param):
    tools = [TOOL] if tool_choice else None
    with pytest.raises(ConstraintError) as refused:
        ChatConstraints.from_request(response_format, tools, tool_choice, True)
    assert refused.value.param == param


def test_without_parallel_calls_auto_keeps_the_first_call():
    two = BLOCK.replace("\n]", ',\n{"name": "add", "arguments": {"a": 2}}\n]')
    assert len(ChatConstraints.from_request(None, [TOOL], None, True).answer(two)[1]) == 2
    single = ChatConstraints.from_request(None, [TOOL], None, False)
    assert single.answer(two) == (None, [ToolCall("add", '{"a": 1}')])
    stream = single.stream()
    assert stream.feed(two + two) == ("", [ToolCall("add", '{"a": 1}')])
