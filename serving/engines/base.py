"""The engine protocol every backend implements, and the types that cross it.

Contract of `generate`: an async iterator of `GenerationOutput`, each carrying the text and token ids
produced since the previous one (several tokens when the consumer fell behind); the last one has a
`finish_reason`. A request the engine refuses (prompt too long, queue full) raises `EngineError`
before the first output. Closing the iterator early aborts the request and frees its slot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: no logprobs; k: the sampled token's plus the top k

    @classmethod
    def from_dict(cls, values: dict) -> SamplingParams:
        return cls(**{**values, "stop": tuple(values.get("stop") or ())})


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class GenerationOutput:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int  # total so far
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    queue_seconds: float = 0.0  # time the request waited for a batch slot (set on the first output)
    replica_seconds: float = 0.0  # share of engine step time this request used, total so far


class EngineError(Exception):
    """A request the engine cannot take; `status` is the HTTP status the router should answer with."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def to_dict(self) -> dict:
        return {"status": self.status, "message": self.message, "param": self.param, "code": self.code}


def check_prompt_fits(prompt_tokens: int, max_tokens: int | None, context: int) -> int:
    """The completion budget of a request (max_tokens, or what the context leaves); a 400 EngineError if the
    prompt, or prompt plus max_tokens, does not fit the context. Every backend answers these the same way."""
    if prompt_tokens == 0:
        raise EngineError(400, "the prompt is empty: there is nothing to continue", param="prompt",
                          code="empty_prompt")
    if prompt_tokens + 1 > context:
        raise EngineError(400, f"This model's maximum context length is {context} tokens; the prompt has "
                               f"{prompt_tokens} tokens, which leaves no room for a completion.",
                          param="messages", code="context_length_exceeded")
    if max_tokens is not None and prompt_tokens + max_tokens > context:
        raise EngineError(400, f"This model's maximum context length is {context} tokens. However, you "
                               f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in "
                               f"the prompt, {max_tokens} for the completion).",
                          param="max_tokens", code="context_length_exceeded")
    return max_tokens or context - prompt_tokens


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    slots: int
    context_length: int
    generated_tokens_total: int
    ready: bool
    busy_seconds_total: float = 0.0  # time spent in prefill and decode steps
    cache_use_ratio: float | None = None  # KV-cache blocks in use (vLLM); None: running / slots


class TextEngine(Protocol):
    """What a chat/completion backend provides: ONNX Runtime (onnx_engine.py) or vLLM (vllm_engine.py)."""

    async def start(self) -> None: ...

    def generate(self, request_id: str, prompt: str | list[int], params: SamplingParams) -> AsyncIterator[
        GenerationOutput]: ...

    def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...

    def render_chat(self, messages: list[dict]) -> str: ...

    def encode(self, text: str) -> list[int]: ...
