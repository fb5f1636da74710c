"""The engine protocol every backend implements, and the types that cross it.

Contract of `generate`: an async iterator of `GenerationOutput`, each carrying the text and token ids
produced since the previous one (several tokens when the consumer fell behind); the last one has a
`finish_reason`. A request the engine refuses (prompt too long, queue full) raises `EngineError`
before the first output. Closing the iterator early aborts the request and frees its slot.

The replica sends these types to the router as they are (pickled by Ray): `GenerationOutput` per step, and
the error as a `serving.protocol.ApiError`, of which `EngineError` is the engine's kind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol

from serving.protocol import ApiError


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


@dataclass(frozen=True)
class GenerationOutput:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int  # total so far
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    queue_seconds: float = 0.0  # time the request waited for a batch slot (set on the first output)
    replica_seconds: float = 0.0  # share of engine step time this request used, total so far

    def followed_by(self, later: GenerationOutput) -> GenerationOutput:
        """This output and the next one of the same request as one: text, tokens and logprobs joined, the totals
        and the finish reason of the later one, the queue time of the first."""
        return GenerationOutput(
            text=self.text + later.text, token_ids=self.token_ids + later.token_ids,
            prompt_tokens=later.prompt_tokens, completion_tokens=later.completion_tokens,
            finish_reason=later.finish_reason, logprobs=self.logprobs + later.logprobs,
            queue_seconds=self.queue_seconds, replica_seconds=later.replica_seconds,
        )


@dataclass(frozen=True)
class EmbeddingOutput:
    vectors: list[list[float]]  # one per input text, in order
    tokens: list[int]  # each input's token count


class EngineError(ApiError):
    """A request the engine cannot take, or a failure while generating; `status` is the HTTP status to answer."""


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
