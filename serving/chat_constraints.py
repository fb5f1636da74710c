"""What a chat request's `response_format`, `tools`, `tool_choice` and `parallel_tool_calls` ask of its output, in
one place: the constraint the engines enforce, the messages the model sees, and how its text becomes the answer's
content and tool calls. Built where the request enters, so what cannot be honoured is a 400 before any replica.

- `response_format` json_object or json_schema: the output is constrained to JSON (and to the schema);
- `tool_choice` "required" or a named function: the output is constrained to the model's tool-call format, and is
  read back as calls;
- `tool_choice` "auto": the model is free; calls are read out of its text (serving.engines.tool_calls);
- `tool_choice` "none": the tools are not shown to the model.
A JSON `response_format` with `tool_choice` "auto" would need the answer to be either a call or the schema's JSON;
that is refused (400) rather than half honoured. With a forced call the answer is the call, so a `response_format`
beside it has nothing to apply to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from serving.engines.grammar import Constraint, ConstraintError, json_object_constraint, json_schema_constraint
from serving.engines.tool_calls import (
    Function,
    ToolCall,
    ToolCallStream,
    ToolChoice,
    parse_functions,
    parse_tool_calls,
    render_messages,
    tool_call_constraint,
)


@dataclass(frozen=True)
class ChatConstraints:
    constraint: Constraint | None = None
    functions: list[Function] = field(default_factory=list)
    choice: ToolChoice = ToolChoice("none")
    parallel: bool = True  # parallel_tool_calls: false is at most one call (the grammar's, or the first one read)

    @classmethod
    def from_request(cls, response_format: Mapping[str, Any] | None, tools: Sequence[Mapping[str, Any]] | None,
                     tool_choice: str | Mapping[str, Any] | None, parallel_tool_calls: bool) -> ChatConstraints:
        """From the request's fields as JSON values; a `ConstraintError` (a 400 naming the field) for what cannot
        be honoured."""
        functions = parse_functions(tools)
        choice = ToolChoice.from_request(tool_choice, functions)
        if choice.forced:
            return cls(tool_call_constraint(functions, choice, parallel_tool_calls), functions, choice,
                       parallel_tool_calls)
        constraint = response_format_constraint(response_format)
        if constraint is not None and choice.mode == "auto":
            raise ConstraintError('a JSON response_format with tool_choice "auto" is not supported: send tool_choice '
                                  '"none", "required" or a function, or no tools', "response_format")
        return cls(constraint, functions, choice, parallel_tool_calls)

    @property
    def reads_tool_calls(self) -> bool:
        return self.choice.mode != "none" and bool(self.functions)

    def messages(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The conversation as the model's template takes it (tool prompt, calls and results as text)."""
        return render_messages(messages, self.functions, self.choice)

    def answer(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """A finished output as (content, tool calls)."""
        if not self.reads_tool_calls:
            return text, []
        return parse_tool_calls(text, self.functions, None if self.parallel else 1)

    def stream(self) -> ToolCallStream | None:
        """A reader for one streamed choice, or None when the text is the content as it comes."""
        return ToolCallStream(self.functions, None if self.parallel else 1) if self.reads_tool_calls else None


def response_format_constraint(response_format: Mapping[str, Any] | None) -> Constraint | None:
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_object_constraint()
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        if "schema" not in spec:
            raise ConstraintError("response_format json_schema needs a schema", "response_format")
        return json_schema_constraint(spec["schema"], bool(spec.get("strict")))
    raise ConstraintError(f"response_format type must be text, json_object or json_schema, not {kind!r}",
                          "response_format")
