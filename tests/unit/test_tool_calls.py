"""Tool calls in SmolLM2's trained format (serving.engines.tool_calls): the prompt and history rendering, the grammar
that forces a call (random walks through its mask parse into calls whose arguments validate), and the parser for
free output, whole and streamed."""

import json

import numpy as np
import pytest

from serving.engines.grammar import ConstraintError, TokenGrammars
from serving.engines.tool_calls import (
    ToolCall,
    ToolCallStream,
    ToolChoice,
    parse_functions,
    parse_tool_calls,
    render_messages,
    tool_call_constraint,
)
from tests.helpers.small_tokenizer import END_OF_SEQUENCE, unit_tokenizer

UNITS = ["celsius", "fahrenheit"]
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                                        "unit": {"enum": UNITS}},
                       "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "add", "parameters": {"type": "object", "properties": {"a": {"type": "integer", "maximum": 99},
                                                                       "b": {"type": "integer", "maximum": 99}},
                                      "required": ["a", "b"], "additionalProperties": False}}},
]
FUNCTIONS = parse_functions(TOOLS)
CALL_BLOCK = '<tool_call>[\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n]</tool_call>'
WALKS = 5
MAX_STEPS = 300


@pytest.fixture(scope="module")
def tokenizer():
    return unit_tokenizer()


@pytest.fixture(scope="module")
def grammars(tokenizer) -> TokenGrammars:
    return TokenGrammars.from_tokenizer(tokenizer, [tokenizer.token_to_id(END_OF_SEQUENCE)])


def walk(grammars, constraint, tokenizer, seed: int) -> str:
    rng, matcher, tokens = np.random.default_rng(seed), grammars.matcher(constraint, "tools"), []
    for _ in range(MAX_STEPS):
        if matcher.is_finished():
            return tokenizer.decode(tokens)
        token = int(rng.choice(np.flatnonzero(matcher.allowed_tokens_mask())))
        assert matcher.accept(token), matcher.error()
        tokens.append(token)
    pytest.fail(f"no end after {MAX_STEPS} tokens: {tokenizer.decode(tokens)!r}")


def check_arguments(call: ToolCall) -> None:
    arguments = json.loads(call.arguments)
    if call.name == "get_weather":
        assert set(arguments) == {"city", "unit"} and len(arguments["city"]) <= 10 and arguments["unit"] in UNITS
    else:
        assert set(arguments) == {"a", "b"} and all(isinstance(v, int) and v <= 99 for v in arguments.values())


def test_a_named_function_is_the_only_call_the_grammar_allows(grammars, tokenizer):
    constraint = tool_call_constraint(FUNCTIONS, ToolChoice.from_request(
        {"type": "function", "function": {"name": "get_weather"}}, FUNCTIONS), parallel=True)
    for seed in range(WALKS):
        content, calls = parse_tool_calls(walk(grammars, constraint, tokenizer, seed), FUNCTIONS)
        assert content is None and calls and all(call.name == "get_weather" for call in calls)
        for call in calls:
            check_arguments(call)


def test_required_without_parallel_calls_yields_exactly_one_valid_call(grammars, tokenizer):
    constraint = tool_call_constraint(FUNCTIONS, ToolChoice.from_request("required", FUNCTIONS), parallel=False)
    names = set()
    for seed in range(WALKS * 2):
        content, calls = parse_tool_calls(walk(grammars, constraint, tokenizer, seed), FUNCTIONS)
        assert content is None and len(calls) == 1
        check_arguments(calls[0])
        names.add(calls[0].name)
    assert names == {"get_weather", "add"}


def test_arguments_that_do_not_validate_are_refused(grammars, tokenizer):
    constraint = tool_call_constraint(FUNCTIONS, ToolChoice.from_request("required", FUNCTIONS), parallel=True)
    matcher = grammars.matcher(constraint, "tools")
    ids = tokenizer.encode(CALL_BLOCK.replace('"a": 1', '"a": "1"'), add_special_tokens=False).ids
    assert not all(matcher.accept(token) for token in ids)


def test_parameters_strict_mode_cannot_enforce_are_refused_by_name():
    tools = [{"type": "function", "function": {"name": "f", "strict": True,
                                               "parameters": {"type": "object", "not": {"required": ["x"]}}}}]
    functions = parse_functions(tools)
    with pytest.raises(ConstraintError) as refused:
        tool_call_constraint(functions, ToolChoice.from_request("required", functions), parallel=True)
    assert "not" in refused.value.message and refused.value.param == "tools"


def test_tool_choice_is_checked_against_the_tools():
    assert ToolChoice.from_request(None, FUNCTIONS) == ToolChoice("auto")
    assert ToolChoice.from_request(None, []) == ToolChoice("none")
    for choice, functions in [({"type": "function", "function": {"name": "nope"}}, FUNCTIONS), ("required", []),
                              ("sometimes", FUNCTIONS)]:
        with pytest.raises(ConstraintError) as refused:
            ToolChoice.from_request(choice, functions)
        assert refused.value.param == "tool_choice"
    with pytest.raises(ConstraintError):
        parse_functions([TOOLS[0], TOOLS[0]])


def test_free_text_and_call_blocks_are_told_apart():
    assert parse_tool_calls("Just text.", FUNCTIONS) == ("Just text.", [])
    assert parse_tool_calls(CALL_BLOCK, FUNCTIONS) == (None, [ToolCall("add", '{"a": 1, "b": 2}')])
    content, calls = parse_tool_calls(f"Let me add. {CALL_BLOCK}", FUNCTIONS)
    assert content == "Let me add. " and [c.name for c in calls] == ["add"]
    single = '<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>'
    assert parse_tool_calls(single, FUNCTIONS)[1] == [ToolCall("add", '{"a": 1, "b": 2}')]


@pytest.mark.parametrize("block", [CALL_BLOCK.replace("add", "multiply"), CALL_BLOCK.replace("}}", "}"),
                                   CALL_BLOCK.replace('"arguments": {"a": 1, "b": 2}', '"arguments": "a=1"')])
def test_a_block_that_does_not_parse_into_known_calls_stays_text(block):
    assert parse_tool_calls(block, FUNCTIONS) == (block, [])


def test_a_stream_parses_as_the_whole_text_does():
    text = f"Sure. {CALL_BLOCK} Done <tool_ and <tool_call>[unfinished"
    stream, content, calls = ToolCallStream(FUNCTIONS), [], []
    for character in text:
        released, found = stream.feed(character)
        assert "<tool_call>" not in released
        content.append(released)
        calls += found
    content.append(stream.finish())
    assert ("".join(content), calls) == parse_tool_calls(text, FUNCTIONS)
    assert calls == [ToolCall("add", '{"a": 1, "b": 2}')]


def test_a_stream_holds_back_only_what_could_begin_a_tag():
    stream = ToolCallStream(FUNCTIONS)
    assert stream.feed("Hello <tool") == ("Hello ", [])
    assert stream.feed("box>") == ("<toolbox>", [])


def test_history_is_rendered_in_the_trained_format():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1 + 2?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
    ]
    rendered = render_messages(messages, FUNCTIONS, ToolChoice("auto"))
    system = rendered[0]["content"]
    assert rendered[0]["role"] == "system" and system.endswith("Be brief.")
    assert json.loads(system[system.index("<tools>") + 7:system.index("</tools>")]) == TOOLS
    assert rendered[2] == {"role": "assistant", "content": CALL_BLOCK}
    assert rendered[3] == {"role": "user", "content": "<tool_response>\n3\n</tool_response>"}
    assert render_messages(messages, FUNCTIONS, ToolChoice("none"))[0] == {"role": "system", "content": "Be brief."}
