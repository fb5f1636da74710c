"""Tool calls for a model whose chat template does not know tools (SmolLM2's renders only role and content).

The tools reach the model in the function-calling system prompt SmolLM2-Instruct was trained with (its model card;
Ollama's SmolLM2 template carries the same text), and calls come back in that prompt's format, a JSON list in one tag:

    <tool_call>[
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    ]</tool_call>

History is rendered in the same format: an assistant message's `tool_calls` as such a block, a `tool` message as a
user turn holding `<tool_response>...</tool_response>`. `tool_choice` "required" or a named function is enforced by
`tool_call_constraint` (the arguments then always parse and validate against the function's parameters); "auto" leaves
the model free and `parse_tool_calls` reads calls out of its text; "none" sends no tools at all, since this prompt
tells the model to answer only with calls.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from serving.engines.grammar import Constraint, ConstraintError, json_schema_options, lark_constraint

TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"
CALLS_OPEN, CALLS_SEPARATOR, CALLS_CLOSE = TOOL_CALL_OPEN + "[\n", ",\n", "\n]" + TOOL_CALL_CLOSE
ANY_ARGUMENTS: dict[str, Any] = {"type": "object"}  # a function declared without `parameters`
TOOL_PROMPT = """You are an expert in composing functions. You are given a question and a set of possible functions.
Based on the question, you will need to make one or more function/tool calls to achieve the purpose.
If none of the functions can be used, point it out and refuse to answer.
If the given question lacks the parameters required by the function, also point it out.
You have access to the following tools:
<tools>{tools}</tools>
The output MUST strictly adhere to the following format, and NO other text MUST be included.
The example format is as follows. Please make sure the parameter type is correct. If no function call is needed, \
please make the tool calls an empty list '[]'.
<tool_call>[
{{"name": "func_name1", "arguments": {{"argument1": "value1", "argument2": "value2"}}}},
... (more tool calls as required)
]</tool_call>"""


@dataclass(frozen=True)
class Function:
    """One entry of the request's `tools` (`{"type": "function", "function": {...}}`)."""

    name: str
    description: str | None
    parameters: Mapping[str, Any]
    strict: bool

    @classmethod
    def from_tool(cls, tool: Mapping[str, Any]) -> Function:
        spec = tool.get("function") if tool.get("type") == "function" else None
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise ConstraintError('each tool must be {"type": "function", "function": {"name": ...}}', "tools")
        return cls(spec["name"], spec.get("description"), spec.get("parameters") or ANY_ARGUMENTS,
                   bool(spec.get("strict")))

    def declaration(self) -> dict[str, Any]:
        described = {"description": self.description} if self.description else {}
        return {"type": "function", "function": {"name": self.name, **described, "parameters": dict(self.parameters)}}

    def call_schema(self) -> dict[str, Any]:
        """One call of this function, as the model writes it (llguidance reads `x-guidance` options at the top)."""
        call = {"type": "object", "properties": {"name": {"const": self.name}, "arguments": dict(self.parameters)},
                "required": ["name", "arguments"], "additionalProperties": False}
        return json_schema_options(call, self.strict)


@dataclass(frozen=True)
class ToolChoice:
    """`tool_choice`: "none", "auto", "required", or one function by name (`mode` "function")."""

    mode: Literal["none", "auto", "required", "function"]
    name: str | None = None

    @classmethod
    def from_request(cls, choice: str | Mapping[str, Any] | None, functions: Sequence[Function]) -> ToolChoice:
        if choice is None:
            return cls("auto" if functions else "none")
        if isinstance(choice, str):
            if choice not in ("none", "auto", "required"):
                raise ConstraintError(f"tool_choice must be none, auto, required or a function, not {choice!r}",
                                      "tool_choice")
            if choice != "none" and not functions:
                raise ConstraintError(f'tool_choice "{choice}" needs tools', "tool_choice")
            return cls(choice)
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if name not in {f.name for f in functions}:
            raise ConstraintError(f"tool_choice names a function that is not in tools: {name!r}", "tool_choice")
        return cls("function", name)

    @property
    def forced(self) -> bool:
        return self.mode in ("required", "function")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it


def parse_functions(tools: Sequence[Mapping[str, Any]] | None) -> list[Function]:
    functions = [Function.from_tool(tool) for tool in tools or []]
    names = [f.name for f in functions]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise ConstraintError(f"tools declares a function twice: {', '.join(duplicates)}", "tools")
    return functions


# --- prompt ----------------------------------------------------------------------------------------------------


def tool_prompt(functions: Sequence[Function]) -> str:
    return TOOL_PROMPT.format(tools=json.dumps([f.declaration() for f in functions], ensure_ascii=False))


def render_messages(messages: Sequence[Mapping[str, Any]], functions: Sequence[Function],
                    choice: ToolChoice) -> list[dict[str, Any]]:
    """Messages for a template without tools: the tool prompt leads the system message (any system text the request
    had follows it), assistant `tool_calls` and `tool` results become text in the trained format."""
    rendered = [_rendered(message) for message in messages]
    if choice.mode == "none" or not functions:
        return rendered
    prompt = tool_prompt(functions)
    if rendered and rendered[0]["role"] == "system":
        return [{"role": "system", "content": f"{prompt}\n\n{rendered[0]['content']}"}, *rendered[1:]]
    return [{"role": "system", "content": prompt}, *rendered]


def _rendered(message: Mapping[str, Any]) -> dict[str, Any]:
    content = message.get("content") or ""
    if message["role"] == "tool":
        return {"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"}
    if message["role"] == "assistant" and message.get("tool_calls"):
        block = calls_block(message["tool_calls"])
        return {"role": "assistant", "content": f"{content}\n{block}" if content else block}
    return {"role": message["role"], "content": content}


def calls_block(tool_calls: Sequence[Mapping[str, Any]]) -> str:
    """An assistant message's OpenAI `tool_calls` in the model's format."""
    calls = []
    for call in tool_calls:
        function = call.get("function") or {}
        calls.append(json.dumps({"name": function.get("name"), "arguments": _arguments(function.get("arguments"))},
                                ensure_ascii=False))
    return CALLS_OPEN + CALLS_SEPARATOR.join(calls) + CALLS_CLOSE


def _arguments(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments if arguments is not None else {}


# --- grammar (forced calls) ------------------------------------------------------------------------------------


def tool_call_constraint(functions: Sequence[Function], choice: ToolChoice, parallel: bool) -> Constraint:
    """A Lark grammar (llguidance's dialect) for the whole output when `choice` forces a call: one block of calls,
    each the named function (or any of `functions` for "required"), with arguments that validate; at most one call
    unless `parallel`. Raises `ConstraintError` (param `tools`) if a function's parameters cannot be enforced."""
    allowed = [f for f in functions if choice.mode != "function" or f.name == choice.name]
    alternatives = " | ".join(f"call_{i}" for i in range(len(allowed)))
    repeat = f" ({json.dumps(CALLS_SEPARATOR)} call)*" if parallel else ""
    lines = ["%llguidance {}", f"start: {json.dumps(CALLS_OPEN)} call{repeat} {json.dumps(CALLS_CLOSE)}",
             f"call: {alternatives}"]
    lines += [f"call_{i}: %json {json.dumps(f.call_schema())}" for i, f in enumerate(allowed)]
    return lark_constraint("\n".join(lines) + "\n", "tools")


# --- parsing ---------------------------------------------------------------------------------------------------


def parse_tool_calls(text: str, functions: Sequence[Function],
                     max_calls: int | None = None) -> tuple[str | None, list[ToolCall]]:
    """The content (text outside call blocks; None when calls came with only whitespace around them) and the calls
    of a finished output, at most `max_calls` (`parallel_tool_calls: false` is 1: later calls are dropped). A block
    that does not parse, or calls a function not in `functions`, stays text."""
    stream = ToolCallStream(functions, max_calls)
    content, calls = stream.feed(text)
    content += stream.finish()
    return (None if calls and not content.strip() else content), calls


class ToolCallStream:
    """`parse_tool_calls` on a stream: text deltas in; out, the content that can be released (text that might be
    the start of a `<tool_call>` tag, or is inside an unclosed block, is held back) and the calls of each block as
    it closes."""

    def __init__(self, functions: Sequence[Function], max_calls: int | None = None) -> None:
        self.names = {f.name for f in functions}
        self.max_calls = max_calls
        self.calls = 0  # released so far
        self.pending = ""

    def feed(self, delta: str) -> tuple[str, list[ToolCall]]:
        self.pending += delta
        released: list[str] = []
        calls: list[ToolCall] = []
        while (start := self.pending.find(TOOL_CALL_OPEN)) >= 0:
            end = self.pending.find(TOOL_CALL_CLOSE, start)
            if end < 0:
                break
            block = _block_calls(self.pending[start + len(TOOL_CALL_OPEN):end], self.names)
            released.append(self.pending[:start] if block is not None else self.pending[:end + len(TOOL_CALL_CLOSE)])
            calls += self._within_limit(block or [])
            self.pending = self.pending[end + len(TOOL_CALL_CLOSE):]
        held = self.pending.find(TOOL_CALL_OPEN)
        if held < 0:
            held = len(self.pending) - _partial_tag(self.pending)
        released.append(self.pending[:held])
        self.pending = self.pending[held:]
        return "".join(released), calls

    def _within_limit(self, calls: list[ToolCall]) -> list[ToolCall]:
        if self.max_calls is not None:
            calls = calls[: max(self.max_calls - self.calls, 0)]
        self.calls += len(calls)
        return calls

    def finish(self) -> str:
        """What was held back, as text (an unclosed block: the output ended inside it)."""
        rest, self.pending = self.pending, ""
        return rest


def _partial_tag(text: str) -> int:
    """Length of the longest end of `text` that begins `<tool_call>`."""
    for size in range(min(len(text), len(TOOL_CALL_OPEN) - 1), 0, -1):
        if TOOL_CALL_OPEN.startswith(text[-size:]):
            return size
    return 0


def _block_calls(inside: str, names: set[str]) -> list[ToolCall] | None:
    try:
        parsed = json.loads(inside)
    except json.JSONDecodeError:
        return None
    entries = parsed if isinstance(parsed, list) else [parsed]
    calls = []
    for entry in entries:
        if not (isinstance(entry, dict) and entry.get("name") in names and isinstance(entry.get("arguments"), dict)):
            return None
        calls.append(ToolCall(entry["name"], json.dumps(entry["arguments"], ensure_ascii=False)))
    return calls
