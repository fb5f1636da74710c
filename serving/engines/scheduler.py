"""Iteration-level (continuous) batching over a `SlotKVModel`.

One thread owns the model. Each iteration it drops aborted sequences, admits waiting requests into
free slots (one prefill each, a few per iteration so running streams keep flowing), then runs one
decode step over every running sequence together. Finished sequences leave at once; the last running
sequence moves into the freed slot so that running slots stay packed at 0..n-1.

Results cross to the asyncio side through `loop.call_soon_threadsafe`, one event per token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from serving.engines.base import EngineError, GenerationOutput, SamplingParams, TokenLogprob, check_prompt_fits
from serving.engines.detokenizer import IncrementalDetokenizer
from serving.engines.onnx_model import SlotKVModel
from serving.engines.sampling import Sampler, log_softmax

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
    sampler: Sampler
    detokenizer: IncrementalDetokenizer
    submitted: float = field(default_factory=time.monotonic)
    queue_seconds: float = 0.0
    replica_seconds: float = 0.0
    length: int = 0  # tokens in this sequence's KV cache
    generated: list[int] = field(default_factory=list)
    finish_reason: str | None = None

    def publish(self, output: GenerationOutput | EngineError | None) -> None:
        # The consumer's event loop may be gone (its caller gave up); the batcher must go on regardless.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, output)


class ContinuousBatcher:
    def __init__(self, model: SlotKVModel, tokenizer, max_queue: int) -> None:
        self.model, self.tokenizer, self.max_queue = model, tokenizer, max_queue
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.aborted: set[str] = set()
        self.generated_tokens_total = 0
        self.busy_seconds_total = 0.0
        self._condition = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="continuous-batcher", daemon=True)
        self._thread.start()

    # --- called from the asyncio side -------------------------------------------------------------

    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        max_tokens = check_prompt_fits(len(prompt_ids), params.max_tokens, self.model.context_length)
        loop = asyncio.get_running_loop()
        sequence = Sequence(request_id, prompt_ids, params, max_tokens, loop,
                            asyncio.Queue(), Sampler(params), IncrementalDetokenizer(self.tokenizer, params.stop))
        with self._condition:
            if len(self.waiting) >= self.max_queue:
                raise EngineError(503, "the replica's queue is full; retry shortly", code="overloaded")
            self.waiting.append(sequence)
            self._condition.notify()
        return sequence

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
        """The model thread's loop; an unexpected failure ends the running requests, never the thread."""
        while not self._stopping:
            try:
                self._iterate()
            except Exception:
                logger.exception("engine step failed; ending the running requests with an error")
                failure = EngineError(500, "the engine failed while generating; see the replica's log")
                for sequence in self.running:
                    sequence.publish(failure)
                    sequence.publish(None)
                self.running = []

    def _iterate(self) -> None:
        with self._condition:
            while not (self.waiting or self.running or self._stopping):
                self._condition.wait()
            if self._stopping:
                return
            admitted = self._take_admissions()
            aborted, self.aborted = self.aborted, set()
        self._drop(lambda s, gone=aborted: s.request_id in gone, publish=False)
        for sequence in admitted:
            if sequence.request_id in aborted:
                continue
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
        slot = len(self.running)
        self.running.append(sequence)
        sequence.length = len(sequence.prompt_ids)
        logits = self.model.forward(slot, np.array([sequence.prompt_ids]), [sequence.length])
        elapsed = time.monotonic() - started
        sequence.replica_seconds += elapsed
        self.busy_seconds_total += elapsed
        self._accept(sequence, logits[0, -1])
        self._drop(lambda s: s.finish_reason is not None, publish=True)

    def _decode_step(self) -> None:
        started = time.monotonic()
        running = self.running
        input_ids = np.array([[s.generated[-1]] for s in running])
        logits = self.model.forward(0, input_ids, [s.length + 1 for s in running])
        elapsed = time.monotonic() - started
        share = elapsed / len(running)
        self.busy_seconds_total += elapsed
        for row, sequence in enumerate(running):
            sequence.length += 1
            sequence.replica_seconds += share
            self._accept(sequence, logits[row, -1])
        self._drop(lambda s: s.finish_reason is not None, publish=True)

    def _accept(self, sequence: Sequence, logits: np.ndarray) -> None:
        """Choose the next token, turn it into text, decide whether the sequence is finished, publish."""
        token = sequence.sampler.choose(logits)
        sequence.generated.append(token)
        self.generated_tokens_total += 1
        logprobs = self._logprobs(sequence, logits, token)
        text = ""
        if token in self.model.shape.eos_token_ids:
            sequence.finish_reason = "stop"
        else:
            text = sequence.detokenizer.add(token)
            if sequence.detokenizer.stopped:
                sequence.finish_reason = "stop"
            elif len(sequence.generated) >= sequence.max_tokens or sequence.length + 1 >= self.model.context_length:
                sequence.finish_reason = "length"
        if sequence.finish_reason is not None:
            text += sequence.detokenizer.finish()
        sequence.publish(GenerationOutput(
            text=text, token_ids=[token], prompt_tokens=len(sequence.prompt_ids),
            completion_tokens=len(sequence.generated), finish_reason=sequence.finish_reason, logprobs=logprobs,
            queue_seconds=sequence.queue_seconds, replica_seconds=sequence.replica_seconds,
        ))

    def _logprobs(self, sequence: Sequence, logits: np.ndarray, token: int) -> list[TokenLogprob]:
        if sequence.params.logprobs is None:
            return []
        values = log_softmax(logits)
        top = np.argsort(-values)[: sequence.params.logprobs] if sequence.params.logprobs else []
        decode = self.tokenizer.id_to_token
        alternatives = tuple((decode(int(t)), float(values[t])) for t in top)
        return [TokenLogprob(decode(token), float(values[token]), alternatives)]

    def _drop(self, leaving, publish: bool) -> None:
        """Remove sequences for which `leaving` is true; keep the rest packed in slots 0..n-1."""
        survivors = []
        for old_slot, sequence in enumerate(self.running):
            if leaving(sequence):
                if publish:
                    sequence.publish(None)  # end of stream
                continue
            slot = len(survivors)
            if old_slot != slot:
                self.model.move_slot(old_slot, slot, sequence.length)
            survivors.append(sequence)
        self.running = survivors
