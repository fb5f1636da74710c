"""Engine outputs -> OpenAI response objects and server-sent events; errors -> HTTP. Only the router formats SSE."""

from __future__ import annotations

import json

from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from serving import protocol as p
from serving.chat_constraints import ChatConstraints
from serving.engines.base import GenerationOutput, TokenLogprob
from serving.engines.tool_calls import ToolCall, ToolCallStream


def error_response(error: p.ApiError) -> JSONResponse:
    """OpenAI's error body with the error's status code and headers (the one place errors become HTTP responses)."""
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def json_response(body: BaseModel, headers: dict[str, str] | None = None) -> Response:
    """A response model as JSON, serialised once (by pydantic, not model_dump then json.dumps)."""
    return Response(body.model_dump_json(), media_type="application/json", headers=headers)


def error_event(error: p.ApiError) -> bytes:
    """The error as an event of a stream whose headers were sent (as OpenAI's API does)."""
    return sse(error.body())


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


SSE_DONE = sse("[DONE]")


class ChunkEnvelope:
    """The bytes of a stream's chunks around their choices (`id`, `object`, `created`, `model`, no usage), made
    once per stream from the chunk model, so that each event serialises only its choices."""

    def __init__(self, chunk: p.ChatCompletionChunk | p.CompletionResponse) -> None:
        head, tail = chunk.model_copy(update={"choices": []}).model_dump_json().split('"choices":[]')
        self.head, self.tail = f'data: {head}"choices":['.encode(), f"]{tail}\n\n".encode()

    def event(self, choices: list[BaseModel]) -> bytes:
        return self.head + b",".join(choice.__pydantic_serializer__.to_json(choice) for choice in choices) + self.tail


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int | None = None) -> p.Usage:
    details = None if cached_tokens is None else p.PromptTokensDetails(cached_tokens=cached_tokens)
    return p.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens, prompt_tokens_details=details)


def chat_logprobs(items: list[TokenLogprob]) -> p.ChoiceLogprobs | None:
    if not items:
        return None
    return p.ChoiceLogprobs(content=[
        p.TokenLogprob(token=i.token, logprob=i.logprob, bytes=list(i.token_bytes),
                       top_logprobs=[p.TopLogprob(token=t, logprob=lp, bytes=list(raw))
                                     for (t, lp), raw in zip(i.top, _top_bytes(i), strict=True)])
        for i in items
    ])


def _top_bytes(item: TokenLogprob) -> tuple[bytes, ...]:
    return item.top_bytes if len(item.top_bytes) == len(item.top) else tuple(t.encode() for t, _ in item.top)


def completion_logprobs(items: list[TokenLogprob], offset: int) -> p.CompletionLogprobs | None:
    """Entries of a completion (or of one streamed chunk); `offset`: where the first one starts in the choice's
    whole text. A prompt's first token has no logprob, and no alternatives (as vLLM answers)."""
    if not items:
        return None
    offsets, position = [], offset
    for item in items:
        offsets.append(position)
        position += len(item.token)
    return p.CompletionLogprobs(tokens=[i.token for i in items], token_logprobs=[i.logprob for i in items],
                                top_logprobs=[None if i.logprob is None else dict(i.top) for i in items],
                                text_offset=offsets)


class CompletionText:
    """One completion choice's text and logprob entries as they arrive, the echoed prompt first (with its own
    logprobs, when the request asked for them), and where the next entry starts in the choice's whole text."""

    def __init__(self, echo: str | None, logprobs: bool) -> None:
        self.echo, self.logprobs = echo, logprobs
        self.offset = 0

    def part(self, output: GenerationOutput) -> tuple[str, p.CompletionLogprobs | None]:
        text, items = output.text, list(output.logprobs)
        if self.echo is not None:
            text, items = self.echo + text, [*(output.prompt_logprobs or []), *items]
            self.echo = None
        entries = completion_logprobs(items, self.offset) if self.logprobs else None
        if entries is not None:
            self.offset = entries.text_offset[-1] + len(entries.tokens[-1])
        return text, entries


def outputs_usage(outputs: list[GenerationOutput]) -> p.Usage:
    """The prompt once, the completion tokens of every choice."""
    return usage(outputs[0].prompt_tokens, sum(o.completion_tokens for o in outputs), outputs[0].cached_tokens)


def chat_finish_reason(reason: str | None, called: bool) -> str | None:
    """A choice that ended with tool calls (not cut by max_tokens) finishes with "tool_calls", as OpenAI's do."""
    return "tool_calls" if called and reason == "stop" else reason


def tool_calls(calls: list[ToolCall]) -> list[p.ToolCall] | None:
    return [p.ToolCall(id=p.new_id("call"), function=p.FunctionCall(name=c.name, arguments=c.arguments))
            for c in calls] or None


def chat_response(request_id: str, model: str, outputs: list[GenerationOutput],
                  constraints: ChatConstraints | None = None) -> p.ChatCompletionResponse:
    """`constraints`: the request's (its text becomes content and tool calls); None: the text is the content."""
    constraints = constraints or ChatConstraints()
    choices = []
    for index, output in enumerate(outputs):
        content, calls = constraints.answer(output.text)
        message = p.ChatResponseMessage(content=content, tool_calls=tool_calls(calls))
        choices.append(p.ChatChoice(index=index, message=message,
                                    finish_reason=chat_finish_reason(output.finish_reason, bool(calls)),
                                    logprobs=chat_logprobs(output.logprobs)))
    return p.ChatCompletionResponse(id=request_id, created=p.now(), model=model, choices=choices,
                                    usage=outputs_usage(outputs))


class ChatToolDeltas:
    """One streamed chat choice read for tool calls: content as it can be released, each call whole in one
    `tool_calls` delta once its block closes (OpenAI's delta format: index, id, type, name, then arguments)."""

    def __init__(self, stream: ToolCallStream) -> None:
        self.stream, self.sent = stream, 0

    def delta(self, output: GenerationOutput) -> tuple[p.ChatDelta, str | None]:
        text, calls = self.stream.feed(output.text)
        if output.finish_reason is not None:
            text += self.stream.finish()
        deltas = [p.ToolCallDelta(index=self.sent + k, id=call.id, type="function",
                                  function=p.FunctionCallDelta(name=call.function.name,
                                                               arguments=call.function.arguments))
                  for k, call in enumerate(tool_calls(calls) or [])]
        self.sent += len(deltas)
        delta = p.ChatDelta(content=text if text or not deltas else None, tool_calls=deltas or None)
        return delta, chat_finish_reason(output.finish_reason, self.sent > 0)


def completion_response(request_id: str, model: str, outputs: list[GenerationOutput], echo: str | None,
                        logprobs: bool) -> p.CompletionResponse:
    """`echo`: the prompt, when the request asked for it back; `logprobs`: whether it asked for logprobs."""
    choices = []
    for index, output in enumerate(outputs):
        text, entries = CompletionText(echo, logprobs).part(output)
        choices.append(p.CompletionChoice(index=index, text=text, finish_reason=output.finish_reason,
                                          logprobs=entries))
    return p.CompletionResponse(id=request_id, created=p.now(), model=model, choices=choices,
                                usage=outputs_usage(outputs))


class ChunkWriter:
    """Turns a stream of (choice index, output) into SSE chunks for chat or text completions."""

    def __init__(self, request_id: str, model: str, chat: bool, include_usage: bool, echo: str | None = None,
                 logprobs: bool = False, constraints: ChatConstraints | None = None) -> None:
        self.request_id, self.model, self.chat, self.include_usage = request_id, model, chat, include_usage
        self.created = p.now()
        self.prompt_tokens = 0
        self.completion_tokens: dict[int, int] = {}
        self.cached_tokens: int | None = None
        self.texts: dict[int, CompletionText] = {}
        self.echo, self.logprobs = echo, logprobs
        self.constraints = constraints or ChatConstraints()
        self.tool_deltas: dict[int, ChatToolDeltas] = {}
        self.envelope = ChunkEnvelope(self._body([]))

    def first(self, n: int) -> list[bytes]:
        """Chat streams open with the assistant role, one chunk per choice."""
        if not self.chat:
            return []
        return [self._chunk([p.ChatChunkChoice(index=i, delta=p.ChatDelta(role="assistant", content=""))])
                for i in range(n)]

    def chunk(self, index: int, output: GenerationOutput) -> bytes:
        self.prompt_tokens = output.prompt_tokens
        if output.cached_tokens is not None:  # on a choice's first output
            self.cached_tokens = output.cached_tokens
        self.completion_tokens[index] = output.completion_tokens
        if self.chat:
            delta, finish_reason = self._chat_delta(index, output)
            choice = p.ChatChunkChoice(index=index, delta=delta, finish_reason=finish_reason,
                                       logprobs=chat_logprobs(output.logprobs))
        else:
            text, entries = self.texts.setdefault(index, CompletionText(self.echo, self.logprobs)).part(output)
            choice = p.CompletionChoice(index=index, text=text, finish_reason=output.finish_reason, logprobs=entries)
        return self._chunk([choice])

    def _chat_delta(self, index: int, output: GenerationOutput) -> tuple[p.ChatDelta, str | None]:
        if index not in self.tool_deltas:
            stream = self.constraints.stream()
            if stream is None:
                return p.ChatDelta(content=output.text), output.finish_reason
            self.tool_deltas[index] = ChatToolDeltas(stream)
        return self.tool_deltas[index].delta(output)

    def last(self) -> list[bytes]:
        """The usage chunk (when asked for, with empty choices, as OpenAI sends it) and [DONE]."""
        tail = []
        if self.include_usage:
            tail.append(self._chunk([], usage(self.prompt_tokens, sum(self.completion_tokens.values()),
                                              self.cached_tokens)))
        return [*tail, SSE_DONE]

    def _chunk(self, choices: list, chunk_usage: p.Usage | None = None) -> bytes:
        if chunk_usage is None:
            return self.envelope.event(choices)
        return f"data: {self._body(choices, chunk_usage).model_dump_json()}\n\n".encode()

    def _body(self, choices: list, chunk_usage: p.Usage | None = None) -> p.ChatCompletionChunk | p.CompletionResponse:
        model = p.ChatCompletionChunk if self.chat else p.CompletionResponse
        return model(id=self.request_id, created=self.created, model=self.model, choices=choices, usage=chunk_usage)
