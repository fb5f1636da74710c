"""Read an OpenAI chat-completions event stream and measure it: first token, gaps, usage, errors.

Pure: it takes (arrival time, line) pairs, so the Locust user and the tests feed it the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class StreamResult:
    first_token_s: float | None = None  # arrival of the first chunk that carried output text
    last_token_s: float | None = None
    chunks: int = 0  # chunks that carried output text
    gaps_ms: list[float] = field(default_factory=list)
    usage: dict | None = None
    finish_reason: str = ""
    error: str = ""
    done: bool = False  # saw `data: [DONE]`

    def add_content(self, at_s: float) -> None:
        if self.last_token_s is not None:
            self.gaps_ms.append((at_s - self.last_token_s) * 1000)
        if self.first_token_s is None:
            self.first_token_s = at_s
        self.last_token_s = at_s
        self.chunks += 1


def parse_stream(lines: Iterable[tuple[float, bytes | str]]) -> StreamResult:
    result = StreamResult()
    for at_s, raw in lines:
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        if not line.startswith("data:"):
            continue  # blank separators, comments, `event:` lines
        payload = line[5:].strip()
        if payload == "[DONE]":
            result.done = True
            break
        _apply_event(result, at_s, payload)
        if result.error:
            break
    return result


def _apply_event(result: StreamResult, at_s: float, payload: str) -> None:
    try:
        event = json.loads(payload)
    except json.JSONDecodeError:
        result.error = f"malformed stream event: {payload[:80]!r}"
        return
    if "error" in event:
        result.error = error_message(event)
        return
    if event.get("usage"):
        result.usage = event["usage"]
    for choice in event.get("choices") or []:
        if _choice_text(choice):
            result.add_content(at_s)
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]


def _choice_text(choice: dict) -> str:
    delta = choice.get("delta") or {}
    return delta.get("content") or choice.get("text") or ""


def error_message(body: object) -> str:
    """The message of an OpenAI error body `{"error": {"message": …}}`, or the body itself, on one line."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = error.get("code") or error.get("type") or ""
        return f"{error.get('message', '')}" + (f" ({code})" if code else "")
    return str(body).replace("\n", " ")[:300]


def usage_problem(result: StreamResult, max_tokens: int) -> str:
    """Why the server's usage disagrees with what was streamed, or "" when it agrees."""
    if result.usage is None:
        return "stream carried no usage (stream_options.include_usage ignored?)"
    output = result.usage.get("completion_tokens")
    if not isinstance(output, int) or not isinstance(result.usage.get("prompt_tokens"), int):
        return f"usage lacks token counts: {result.usage}"
    if output < result.chunks:
        return f"usage says {output} output tokens but {result.chunks} chunks carried text"
    if result.chunks == 0 and output > 0:
        return f"usage says {output} output tokens but no text was streamed"
    if result.finish_reason == "length" and max_tokens and output != max_tokens:
        return f"stopped for length at {output} tokens, max_tokens was {max_tokens}"
    return ""


def time_per_output_token_ms(result: StreamResult, output_tokens: int | None) -> float | None:
    """TPOT: this request's mean time per output token after the first (several tokens may share a chunk)."""
    if result.first_token_s is None or result.last_token_s is None:
        return None
    tokens = output_tokens if output_tokens else result.chunks
    if tokens < 2:
        return None
    return (result.last_token_s - result.first_token_s) * 1000 / (tokens - 1)
