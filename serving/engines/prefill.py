"""The prefill of one prompt, a chunk per batcher iteration: positions reused from the prefix cache first, then
chunks sized by the planner, logits for the last position only (or every position when the request asked for
prompt logprobs), and the prompt's cache kept in the prefix cache when it is complete."""

from __future__ import annotations

import numpy as np

from serving.engines.logprobs import LogprobWriter
from serving.engines.onnx_model import SlotKVModel
from serving.engines.prefill_plan import ChunkPlanner
from serving.engines.prefix_cache import PrefixCache
from serving.engines.prompt_logprobs import PromptScorer
from serving.engines.sequence import Sequence


class PromptRunner:
    def __init__(self, model: SlotKVModel, logprobs: LogprobWriter, planner: ChunkPlanner,
                 prefix_cache: PrefixCache | None) -> None:
        self.model, self.logprobs, self.planner, self.prefix_cache = model, logprobs, planner, prefix_cache
        self.scorers: dict[str, PromptScorer] = {}  # prompt logprobs being gathered, by request id
        self.prefilled_tokens_total = 0  # prompt tokens computed (not those taken from the prefix cache)

    def begin(self, sequence: Sequence, slot: int) -> None:
        """Put what the prefix cache holds of the prompt into `slot`. A request that wants prompt logprobs needs
        the logits of every position, so it reuses nothing."""
        wants_scores = sequence.params.prompt_logprobs is not None
        if wants_scores:
            self.scorers[sequence.request_id] = PromptScorer(self.logprobs, sequence.prompt_ids,
                                                             sequence.params.prompt_logprobs)
        if self.prefix_cache is None:
            return
        sequence.cached_tokens = 0
        match = None if wants_scores else self.prefix_cache.longest(sequence.prompt_ids)
        if match is not None:
            self.model.write_cache(slot, match.cache, match.tokens)
            sequence.length = sequence.cached_tokens = match.tokens

    def run_chunk(self, sequence: Sequence, slot: int, decoding: bool) -> tuple[np.ndarray, int]:
        """Prefill the next chunk; the logits of its last position [1, vocab] and how many tokens it ran."""
        start = sequence.length
        tokens = self.planner.size(len(sequence.prompt_ids) - start, decoding)
        scorer = self.scorers.get(sequence.request_id)
        rows = np.arange(tokens) if scorer is not None else None
        chunk = np.array([sequence.prompt_ids[start : start + tokens]])
        logits = self.model.forward(slot, chunk, [start + tokens], rows)[0]
        if scorer is not None:
            scorer.add(logits, start)
        sequence.length = start + tokens
        self.prefilled_tokens_total += tokens
        return logits[-1:], tokens

    def finish(self, sequence: Sequence, slot: int) -> None:
        """The prompt has run: hand over its logprobs and keep its cache for later prompts."""
        scorer = self.scorers.pop(sequence.request_id, None)
        if scorer is not None:
            sequence.prompt_logprobs = scorer.entries
        if self.prefix_cache is not None:
            self.prefix_cache.store(sequence.prompt_ids, lambda length: self.model.read_cache(slot, length))

    def forget(self, sequence: Sequence) -> None:
        self.scorers.pop(sequence.request_id, None)
