"""One request inside the continuous batcher: its tokens, its place in the cache, its timings."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from serving.engines.base import EngineError, GenerationOutput, SamplingParams, TokenLogprob
from serving.engines.detokenizer import IncrementalDetokenizer
from serving.engines.sampling import SequenceSampling


@dataclass
class Sequence:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    sampling: SequenceSampling
    detokenizer: IncrementalDetokenizer
    submitted: float = field(default_factory=time.monotonic)
    queue_seconds: float = 0.0  # submitted -> its prefill began
    prefill_started: float = 0.0
    prefill_ended: float = 0.0
    prefill_seconds: float | None = None  # its prefill began -> its last prompt chunk ran (decode steps between)
    first_sample_seconds: float | None = None  # sampling, detokenizing and publishing its first token
    cached_tokens: int | None = None  # prompt positions taken from the prefix cache; None: the cache is off
    replica_seconds: float = 0.0
    length: int = 0  # tokens in this sequence's KV cache
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    failed: bool = False
    prompt_logprobs: list[TokenLogprob] | None = None  # sent with the first output

    @property
    def leaving(self) -> bool:
        return self.finish_reason is not None or self.failed

    @property
    def prefilled(self) -> bool:
        return self.length >= len(self.prompt_ids)

    def publish(self, output: GenerationOutput | EngineError | None) -> None:
        # The consumer's event loop may be gone (its caller gave up); the batcher must go on regardless.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, output)

    def output(self, text: str, token_ids: list[int], logprobs: list[TokenLogprob]) -> GenerationOutput:
        prompt_logprobs, self.prompt_logprobs = self.prompt_logprobs, None
        return GenerationOutput(
            text=text, token_ids=token_ids, prompt_tokens=len(self.prompt_ids), completion_tokens=len(self.generated),
            finish_reason=self.finish_reason, logprobs=logprobs, queue_seconds=self.queue_seconds,
            replica_seconds=self.replica_seconds, prompt_logprobs=prompt_logprobs,
            prefill_seconds=self.prefill_seconds, first_sample_seconds=self.first_sample_seconds,
            cached_tokens=self.cached_tokens)
