"""The engine protocol every backend implements, and the types that cross it.

Contract of `generate`: an async iterator of `GenerationOutput`, each carrying the text and token ids
produced since the previous one (several tokens when the consumer fell behind); the last one has a
`finish_reason`. A request the engine refuses (prompt too long, queue full) raises `EngineError`
before the first output. Closing the iterator early aborts the request and frees its slot.

The replica sends these types to the router as they are (pickled by Ray): `GenerationOutput` per step, and
the error as a `serving.protocol.ApiError`, of which `EngineError` is the engine's kind.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from serving.protocol import ApiError

if TYPE_CHECKING:
    from serving.engines.grammar import Constraint

MAX_LOGPROBS = 20  # vLLM's default max_logprobs


@dataclass(frozen=True)
class SamplingParams:
    """A request's sampling parameters, checked where they enter an engine (a 400 naming the field, as vLLM
    answers), so that nothing a request asks for is found impossible on the model thread. `seed` is any integer:
    each backend maps it into its generator's range (the HTTP API bounds it to signed 64 bits, as vLLM does)."""

    max_tokens: int | None = None  # 0: only the prompt is run (prompt logprobs); None: what the context leaves
    temperature: float = 1.0  # below 1e-5: greedy
    top_p: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # None: no logprobs; k: the sampled token's plus the top k
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # vLLM's: over prompt and output tokens; 1 is off
    min_tokens: int = 0  # end-of-sequence and stop strings are ignored until this many tokens
    ignore_eos: bool = False
    prompt_logprobs: int | None = None  # None: none; k: each prompt token's logprob plus the top k
    constraint: Constraint | None = None  # response_format or a forced tool call (serving.engines.grammar)
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias), from grammar.parse_logit_bias

    def __post_init__(self) -> None:
        for name, holds, rule in self._rules():
            if not holds:
                raise EngineError(400, f"{name} must be {rule}; got {getattr(self, name)!r}", param=name,
                                  code="invalid_request")

    def _rules(self) -> tuple[tuple[str, bool, str], ...]:
        def optional_range(value: int | None, low: int, high: float) -> bool:
            return value is None or low <= value <= high

        return (
            ("max_tokens", optional_range(self.max_tokens, 0, math.inf), "at least 0"),
            ("temperature", 0.0 <= self.temperature <= 2.0, "in [0, 2]"),
            ("top_p", 0.0 < self.top_p <= 1.0, "in (0, 1]"),
            ("top_k", optional_range(self.top_k, 1, math.inf), "at least 1, or null"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "in [0, 1]"),
            ("presence_penalty", -2.0 <= self.presence_penalty <= 2.0, "in [-2, 2]"),
            ("frequency_penalty", -2.0 <= self.frequency_penalty <= 2.0, "in [-2, 2]"),
            ("repetition_penalty", 0.0 < self.repetition_penalty < math.inf, "greater than 0 and finite"),
            ("min_tokens", optional_range(self.min_tokens, 0, self.max_tokens if self.max_tokens is not None
                                          else math.inf), "at least 0 and at most max_tokens"),
            ("logprobs", optional_range(self.logprobs, 0, MAX_LOGPROBS), f"in [0, {MAX_LOGPROBS}]"),
            ("prompt_logprobs", optional_range(self.prompt_logprobs, 0, MAX_LOGPROBS), f"in [0, {MAX_LOGPROBS}]"),
            ("stop", all(self.stop), "a list of non-empty strings"),
            ("logit_bias", all(t >= 0 and -100 <= b <= 100 for t, b in self.logit_bias),
             "token ids with biases in [-100, 100]"),
        )

    @classmethod
    def from_dict(cls, values: dict) -> SamplingParams:
        return cls(**{**values, "stop": tuple(values.get("stop") or ()),
                      "logit_bias": tuple(values.get("logit_bias") or ())})


@dataclass(frozen=True)
class TokenLogprob:
    """One token's logprob and its top alternatives. `token` is the text the token adds to the output, so the
    tokens joined spell the text exactly: a token that ends inside a multi-byte character adds "" and the one
    that completes it the whole character (an end-of-sequence token adds ""). `token_bytes` are the token's raw
    bytes (joined, the UTF-8 of the output). An alternative's text is its own piece, or `bytes:\\xe6\\x9d` when
    that is not whole characters (OpenAI's form); `top_bytes` are their raw bytes, in the order of `top`."""

    token: str
    logprob: float | None  # None only for a prompt's first token, which nothing predicts
    top: tuple[tuple[str, float], ...] = ()
    token_bytes: bytes = b""
    top_bytes: tuple[bytes, ...] = ()


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
    prompt_logprobs: list[TokenLogprob] | None = None  # one per prompt token, on the first output, when asked for
    # Parts of the time to the first token, from the first output on; None where the backend does not measure them:
    prefill_seconds: float | None = None  # prefill began -> the prompt's last chunk ran (decode steps in between)
    first_sample_seconds: float | None = None  # choosing the first token and turning it into text
    cached_tokens: int | None = None  # prompt tokens reused from the prefix cache; None: no prefix cache

    def followed_by(self, later: GenerationOutput) -> GenerationOutput:
        """This output and the next one of the same request as one: text, tokens and logprobs joined, the totals
        and the finish reason of the later one, the queue time of the first."""
        return GenerationOutput(
            text=self.text + later.text, token_ids=self.token_ids + later.token_ids,
            prompt_tokens=later.prompt_tokens, completion_tokens=later.completion_tokens,
            finish_reason=later.finish_reason, logprobs=self.logprobs + later.logprobs,
            queue_seconds=self.queue_seconds, replica_seconds=later.replica_seconds,
            prompt_logprobs=self.prompt_logprobs, prefill_seconds=self.prefill_seconds,
            first_sample_seconds=self.first_sample_seconds, cached_tokens=self.cached_tokens,
        )


@dataclass(frozen=True)
class EmbeddingOutput:
    vectors: list[list[float]]  # one per input text, in order
    tokens: list[int]  # each input's token count


class EngineError(ApiError):
    """A request the engine cannot take, or a failure while generating; `status` is the HTTP status to answer."""


def check_prompt_fits(prompt_tokens: int, max_tokens: int | None, context: int) -> int:
    """The completion budget of a request (max_tokens, or what the context leaves; 0 runs the prompt only); a 400
    EngineError if the prompt, or prompt plus max_tokens, does not fit the context. Every backend answers these
    the same way."""
    if prompt_tokens == 0:
        raise EngineError(400, "the prompt is empty: there is nothing to continue", param="prompt",
                          code="empty_prompt")
    if max_tokens is None and prompt_tokens + 1 > context:
        raise EngineError(400, f"This model's maximum context length is {context} tokens; the prompt has "
                               f"{prompt_tokens} tokens, which leaves no room for a completion.",
                          param="messages", code="context_length_exceeded")
    if max_tokens is not None and prompt_tokens + max_tokens > context:
        raise EngineError(400, f"This model's maximum context length is {context} tokens. However, you "
                               f"requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in "
                               f"the prompt, {max_tokens} for the completion).",
                          param="messages" if prompt_tokens >= context else "max_tokens",
                          code="context_length_exceeded")
    return context - prompt_tokens if max_tokens is None else max_tokens


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
