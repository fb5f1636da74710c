"""Iteration-level (continuous) batching over a `SlotKVModel`.

One thread owns the model. Each iteration it drops aborted sequences, takes the next waiting request into
prefill when a slot is free, runs one decode step over every running sequence together and samples every row
at once (sampling.BatchSampler), then runs one chunk of the prompt being prefilled. The chunk is sized so that
the running streams' next token waits little longer than a decode step (prefill_plan.py), so a long prompt
arriving slows them down instead of stopping them. A prompt that starts like one prefilled before takes those
positions from the prefix cache (prefix_cache.py) and prefills only the rest. Finished sequences leave at once.

Slots: running sequences stay packed at 0..n-1, which the decode step binds as one batch; the sequence being
prefilled sits in slot n. A departure moves the last running sequence into the freed slot and the prefilling
one down to the new n: one move each.

A failure stays with its request: its prefill, or the sampling, detokenizing or logprobs of one sequence, ends
that request with a 500 and the others go on. Only a failure of the shared decode forward pass ends every
running request.

Results cross to the asyncio side through `loop.call_soon_threadsafe`, one event per token.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from serving.engines.base import EngineError, SamplingParams, check_prompt_fits
from serving.engines.detokenizer import IncrementalDetokenizer, TokenBytes
from serving.engines.grammar import ConstraintError, LogitBias, TokenGrammars
from serving.engines.logprobs import LogprobWriter
from serving.engines.onnx_model import SlotKVModel
from serving.engines.prefill import PromptRunner
from serving.engines.prefill_plan import ChunkPlanner
from serving.engines.prefix_cache import PrefixCache
from serving.engines.sampling import BatchSampler, SequenceSampling
from serving.engines.sequence import Sequence

logger = logging.getLogger("ray.serve.quantserve.engine")


class ContinuousBatcher:
    """`planner`: chunked prefill (ChunkPlanner(max_tokens=0) runs each prompt whole); `prefix_cache`: None
    turns prefix reuse off."""

    def __init__(self, model: SlotKVModel, tokenizer, max_queue: int, grammars: TokenGrammars | None = None,
                 planner: ChunkPlanner | None = None, prefix_cache: PrefixCache | None = None) -> None:
        self.model, self.tokenizer, self.max_queue = model, tokenizer, max_queue
        self.grammars = grammars  # None: no constrained decoding (a request with a constraint is refused)
        self.planner = planner if planner is not None else ChunkPlanner()
        self.sampler = BatchSampler(grammars=grammars)
        self.logprobs = LogprobWriter(tokenizer, TokenBytes(tokenizer))
        self.waiting: deque[Sequence] = deque()
        self.prefilling: Sequence | None = None  # in slot len(running) while its prompt runs chunk by chunk
        self.running: list[Sequence] = []
        self.aborted: set[str] = set()
        self.prompts = PromptRunner(model, self.logprobs, self.planner, prefix_cache)
        self.generated_tokens_total = 0
        self.busy_seconds_total = 0.0
        # Test-only, None in service: called with each sequence before its next token is accepted; an exception
        # it raises is that sequence's failure (tests fail one request among others with it).
        self.fault_hook: Callable[[Sequence], None] | None = None
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="continuous-batcher", daemon=True)
        self._thread.start()

    @property
    def occupied(self) -> int:
        """Slots in use: the running sequences and the one being prefilled."""
        return len(self.running) + (self.prefilling is not None)

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
        and prefilling requests, never the thread."""
        while not self._stopping:
            try:
                self._iterate()
            except Exception:
                logger.exception("engine step failed; ending the running requests with an error")
                for sequence in [*self.running, *([self.prefilling] if self.prefilling else [])]:
                    sequence.publish(EngineError(500, "the engine failed while generating; see the replica's log",
                                                 code="engine_error"))
                    sequence.publish(None)
                    self.prompts.forget(sequence)
                self.running, self.prefilling = [], None

    def _iterate(self) -> None:
        with self._condition:
            while not (self.waiting or self.running or self.prefilling or self._stopping):
                self._condition.wait()
            if self._stopping:
                return
            aborted, self.aborted = self.aborted, set()
            self.waiting = deque(s for s in self.waiting if s.request_id not in aborted)
            admitted = None
            if self.prefilling is None and self.waiting and len(self.running) < self.model.slots:
                admitted = self.waiting.popleft()
        self._drop(lambda s, gone=aborted: s.request_id in gone, publish=False)
        if admitted is not None:
            self._begin_prefill(admitted)
        decode_seconds = self._decode_step() if self.running else None
        if self.prefilling is not None:
            self._prefill_chunk(self.prefilling, decode_seconds)

    def _begin_prefill(self, sequence: Sequence) -> None:
        sequence.prefill_started = time.monotonic()
        sequence.queue_seconds = sequence.prefill_started - sequence.submitted
        self.prefilling = sequence
        try:
            self.prompts.begin(sequence, len(self.running))
        except Exception:
            self._fail(sequence, "prefill")
            self._drop(lambda s: s.leaving, publish=True)

    def _prefill_chunk(self, sequence: Sequence, decode_seconds: float | None) -> None:
        """One chunk of the prompt in slot len(running); when it was the last, the sequence's first token (or,
        for max_tokens 0, its answer) and its place among the running sequences."""
        started = time.monotonic()
        try:
            logits, tokens = self.prompts.run_chunk(sequence, len(self.running), decoding=bool(self.running))
            if sequence.prefilled:
                self.prompts.finish(sequence, len(self.running))
        except Exception:
            self._fail(sequence, "prefill")
        sequence.prefill_ended = time.monotonic()
        elapsed = sequence.prefill_ended - started
        sequence.replica_seconds += elapsed
        self.busy_seconds_total += elapsed
        if not sequence.failed and decode_seconds is not None:
            self.planner.observe(tokens, elapsed, decode_seconds)
        if not sequence.failed and sequence.prefilled:
            sequence.prefill_seconds = sequence.prefill_ended - sequence.prefill_started
            self.prefilling = None
            self.running.append(sequence)
            if sequence.max_tokens == 0:  # the prompt only: its logprobs are the answer
                sequence.finish_reason = "length"
                sequence.publish(sequence.output("", [], []))
            else:
                self._advance([sequence], logits)
        self._drop(lambda s: s.leaving, publish=True)

    def _decode_step(self) -> float:
        """One token for every running sequence; returns the step's seconds, sampling and publishing included."""
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
        return time.monotonic() - started

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
        if len(sequence.generated) == 1:
            sequence.first_sample_seconds = time.monotonic() - sequence.prefill_ended
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
        staying sequence, so one sequence moves per departure and running slots stay packed at 0..n-1; the
        prefilling sequence follows them down to slot n."""
        prefilling = self.prefilling
        if prefilling is not None and leaving(prefilling):
            self.prefilling = None
            self.prompts.forget(prefilling)
            if publish:
                prefilling.publish(None)
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
        if self.prefilling is not None:
            self.model.move_slot(len(gone), count, self.prefilling.length)
