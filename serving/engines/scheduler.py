"""Iteration-level (continuous) batching over a `SlotKVModel`.

One thread owns the model. Each iteration it drops aborted sequences, admits waiting requests into free
slots (one prefill each, a few per iteration so running streams keep flowing), then runs one decode step
over every running sequence together and samples every row at once (sampling.BatchSampler). Finished
sequences leave at once; the last running sequence moves into each freed slot, so that running slots stay
packed at 0..n-1 with one move per departure.

A failure stays with its request: a prefill (its own forward pass), or the sampling, detokenizing or
logprobs of one sequence, ends that request with a 500 and the others go on. Only a failure of the shared
decode forward pass ends every running request.

Results cross to the asyncio side through `loop.call_soon_threadsafe`, one event per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from serving.engines.base import EngineError, GenerationOutput, SamplingParams, TokenLogprob, check_prompt_fits
from serving.engines.detokenizer import IncrementalDetokenizer, TokenBytes
from serving.engines.grammar import ConstraintError, LogitBias, TokenGrammars
from serving.engines.logprobs import LogprobWriter
from serving.engines.onnx_model import SlotKVModel
from serving.engines.sampling import BatchSampler, SequenceSampling

PREFILLS_PER_ITERATION = 2
logger = logging.getLogger("ray.serve.quantserve.engine")


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
    queue_seconds: float = 0.0
    replica_seconds: float = 0.0
    length: int = 0  # tokens in this sequence's KV cache
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    failed: bool = False
    prompt_logprobs: list[TokenLogprob] | None = None  # sent with the first output

    @property
    def leaving(self) -> bool:
        return self.finish_reason is not None or self.failed

    def publish(self, output: GenerationOutput | EngineError | None) -> None:
        # The consumer's event loop may be gone (its caller gave up); the batcher must go on regardless.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, output)

    def output(self, text: str, token_ids: list[int], logprobs: list[TokenLogprob]) -> GenerationOutput:
        prompt_logprobs, self.prompt_logprobs = self.prompt_logprobs, None
        return GenerationOutput(
            text=text, token_ids=token_ids, prompt_tokens=len(self.prompt_ids), completion_tokens=len(self.generated),
            finish_reason=self.finish_reason, logprobs=logprobs, queue_seconds=self.queue_seconds,
            replica_seconds=self.replica_seconds, prompt_logprobs=prompt_logprobs)


class ContinuousBatcher:
    def __init__(self, model: SlotKVModel, tokenizer, max_queue: int, grammars: TokenGrammars | None = None) -> None:
        self.model, self.tokenizer, self.max_queue = model, tokenizer, max_queue
        self.grammars = grammars  # None: no constrained decoding (a request with a constraint is refused)
        self.sampler = BatchSampler(grammars=grammars)
        self.logprobs = LogprobWriter(tokenizer, TokenBytes(tokenizer))
        self.waiting: deque[Sequence] = deque()
        self.admitting: deque[Sequence] = deque()  # taken from `waiting` this iteration, not prefilled yet
        self.running: list[Sequence] = []
        self.aborted: set[str] = set()
        self.generated_tokens_total = 0
        self.busy_seconds_total = 0.0
        # Test-only, None in service: called with each sequence before its next token is accepted; an exception
        # it raises is that sequence's failure (tests fail one request among others with it).
        self.fault_hook: Callable[[Sequence], None] | None = None
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="continuous-batcher", daemon=True)
        self._thread.start()

    # --- called from the asyncio side -------------------------------------------------------------

    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        max_tokens = check_prompt_fits(len(prompt_ids), params.max_tokens, self.model.context_length)
        sampling = self._sampling(params, prompt_ids)
        sequence = Sequence(request_id, prompt_ids, params, max_tokens, asyncio.get_running_loop(), asyncio.Queue(),
                            sampling, IncrementalDetokenizer(self.tokenizer, params.stop))
        if max_tokens == 0 and params.prompt_logprobs is None:  # nothing to compute
            sequence.finish_reason = "length"
            sequence.publish(sequence.output("", [], []))
            sequence.publish(None)
            return sequence
        with self._condition:
            if len(self.waiting) >= self.max_queue:
                raise EngineError(503, "the replica's queue is full; retry shortly", code="overloaded")
            self.waiting.append(sequence)
            self._condition.notify()
        return sequence

    def _sampling(self, params: SamplingParams, prompt_ids: list[int]) -> SequenceSampling:
        """The sequence's sampler state, its grammar compiled here so that a constraint the engine cannot take is
        a 400 before the request queues."""
        try:
            if params.constraint is not None and self.grammars is None:
                raise ConstraintError("this engine has no constrained decoding", "response_format")
            grammar = None if params.constraint is None else self.grammars.matcher(params.constraint)
            bias = LogitBias.for_vocabulary(params.logit_bias, self.model.shape.vocab_size)
        except ConstraintError as refused:
            raise EngineError(400, refused.message, param=refused.param, code="invalid_request") from None
        return SequenceSampling.start(params, prompt_ids, self.model.shape.eos_token_ids, grammar, bias)

    def abort(self, request_id: str) -> None:
        with self._condition:
            self.aborted.add(request_id)
            self._condition.notify()

    def shutdown(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify()
        self._thread.join(timeout=10)

    # --- the model thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        """The model thread's loop. What escapes an iteration (the shared decode pass failing) ends the running
        and admitted requests, never the thread."""
        while not self._stopping:
            try:
                self._iterate()
            except Exception:
                logger.exception("engine step failed; ending the running requests with an error")
                for sequence in [*self.running, *self.admitting]:
                    sequence.publish(EngineError(500, "the engine failed while generating; see the replica's log",
                                                 code="engine_error"))
                    sequence.publish(None)
                self.running, self.admitting = [], deque()

    def _iterate(self) -> None:
        with self._condition:
            while not (self.waiting or self.running or self._stopping):
                self._condition.wait()
            if self._stopping:
                return
            self.admitting.extend(self._take_admissions())
            aborted, self.aborted = self.aborted, set()
        self._drop(lambda s, gone=aborted: s.request_id in gone, publish=False)
        while self.admitting:
            sequence = self.admitting.popleft()
            if sequence.request_id not in aborted:
                self._prefill(sequence)
        if self.running:
            self._decode_step()

    def _take_admissions(self) -> list[Sequence]:
        admitted = []
        free = self.model.slots - len(self.running)
        while self.waiting and len(admitted) < min(free, PREFILLS_PER_ITERATION):
            admitted.append(self.waiting.popleft())
        waiting_ids = {s.request_id for s in self.waiting}
        for request_id in self.aborted & waiting_ids:
            self.waiting = deque(s for s in self.waiting if s.request_id != request_id)
        return admitted

    def _prefill(self, sequence: Sequence) -> None:
        started = time.monotonic()
        sequence.queue_seconds = started - sequence.submitted
        self.running.append(sequence)
        sequence.length = len(sequence.prompt_ids)
        try:
            logits = self.model.forward(len(self.running) - 1, np.array([sequence.prompt_ids]), [sequence.length])[0]
            if sequence.params.prompt_logprobs is not None:
                sequence.prompt_logprobs = self.logprobs.prompt(logits, sequence.prompt_ids,
                                                                sequence.params.prompt_logprobs)
        except Exception:
            self._fail(sequence, "prefill")
        elapsed = time.monotonic() - started
        sequence.replica_seconds += elapsed
        self.busy_seconds_total += elapsed
        if not sequence.failed and sequence.max_tokens == 0:  # the prompt only: its logprobs are the answer
            sequence.finish_reason = "length"
            sequence.publish(sequence.output("", [], []))
        elif not sequence.failed:
            self._advance([sequence], logits[-1:])
        self._drop(lambda s: s.leaving, publish=True)

    def _decode_step(self) -> None:
        started = time.monotonic()
        running = self.running
        input_ids = np.array([[s.generated[-1]] for s in running])
        logits = self.model.forward(0, input_ids, [s.length + 1 for s in running])
        elapsed = time.monotonic() - started
        share = elapsed / len(running)
        self.busy_seconds_total += elapsed
        for sequence in running:
            sequence.length += 1
            sequence.replica_seconds += share
        self._advance(running, logits[:, -1])
        self._drop(lambda s: s.leaving, publish=True)

    def _advance(self, sequences: list[Sequence], rows: np.ndarray) -> None:
        """Sample the next token of each sequence (one row of `rows` each) and accept it; a failure ends only
        the sequence it belongs to."""
        for sequence, row, choice in zip(sequences, rows, self._sample(sequences, rows), strict=True):
            try:
                if isinstance(choice, Exception):
                    raise choice
                if self.fault_hook is not None:
                    self.fault_hook(sequence)
                self._accept(sequence, row, choice)
            except Exception:
                self._fail(sequence, "sampling" if isinstance(choice, Exception) else "generation")

    def _sample(self, sequences: list[Sequence], rows: np.ndarray) -> list[int | Exception]:
        states = [s.sampling for s in sequences]
        try:
            return self.sampler.sample(rows, states)
        except Exception:
            logger.exception("sampling the batch failed; sampling its rows one by one")
            return [self._sample_alone(rows[i : i + 1], state) for i, state in enumerate(states)]

    def _sample_alone(self, row: np.ndarray, state: SequenceSampling) -> int | Exception:
        try:
            return self.sampler.sample(row, [state])[0]
        except Exception as failure:
            return failure

    def _accept(self, sequence: Sequence, row: np.ndarray, token: int) -> None:
        """Record the token, turn it into text, decide whether the sequence is finished, publish."""
        sequence.generated.append(token)
        sequence.sampling.record(token)
        self.generated_tokens_total += 1
        params, detokenizer = sequence.params, sequence.detokenizer
        text = detokenizer.add(token, check_stop=len(sequence.generated) >= params.min_tokens)
        sequence.finish_reason = self._finish_reason(sequence, token)
        if sequence.finish_reason is not None:
            text += detokenizer.finish()
        logprobs = [] if params.logprobs is None else [
            self.logprobs.generated(row, token, detokenizer.piece, params.logprobs)]
        sequence.publish(sequence.output(text, [token], logprobs))

    def _finish_reason(self, sequence: Sequence, token: int) -> str | None:
        if (token in self.model.shape.eos_token_ids and not sequence.params.ignore_eos) or sequence.detokenizer.stopped:
            return "stop"
        if sequence.sampling.complete:  # the grammar allows nothing more: no need for a step to draw the end
            return "stop"
        if len(sequence.generated) >= sequence.max_tokens or sequence.length + 1 >= self.model.context_length:
            return "length"
        return None

    def _fail(self, sequence: Sequence, stage: str) -> None:
        logger.exception("request %s failed in %s; the other requests go on", sequence.request_id, stage)
        sequence.failed = True
        sequence.publish(EngineError(500, f"the engine failed in {stage} for this request; see the replica's log",
                                     code="engine_error"))

    def _drop(self, leaving: Callable[[Sequence], bool], publish: bool) -> None:
        """Remove the sequences for which `leaving` is true. Each freed slot below the new count takes the last
        staying sequence, so one sequence moves per departure and running slots stay packed at 0..n-1."""
        gone = [leaving(s) for s in self.running]
        if not any(gone):
            return
        if publish:
            for sequence in (s for s, g in zip(self.running, gone, strict=True) if g):
                sequence.publish(None)  # end of stream
        count = len(gone) - sum(gone)
        holes = [slot for slot in range(count) if gone[slot]]
        movers = [slot for slot in range(len(gone) - 1, count - 1, -1) if not gone[slot]]
        packed = self.running[:count]
        for hole, source in zip(holes, movers, strict=True):
            self.model.move_slot(source, hole, self.running[source].length)
            packed[hole] = self.running[source]
        self.running = packed
