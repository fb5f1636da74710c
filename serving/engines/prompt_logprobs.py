"""A prompt's logprobs gathered chunk by chunk as its prefill runs, so that no pass holds more than its own
chunk's logits (a whole 2,000-token prompt's would be about 390 MB)."""

from __future__ import annotations

import numpy as np

from serving.engines.base import TokenLogprob
from serving.engines.logprobs import PROMPT_ROWS_PER_PASS, LogprobWriter, log_normalizers


class PromptScorer:
    """Every prompt token's logprob given the ones before it, plus the top `alternatives`."""

    def __init__(self, writer: LogprobWriter, prompt_ids: list[int], alternatives: int) -> None:
        self.writer, self.prompt_ids, self.alternatives = writer, prompt_ids, alternatives
        self.texts = writer.prompt_texts(prompt_ids)
        self.entries: list[TokenLogprob] = [writer.prompt_start(prompt_ids, self.texts)]

    def add(self, logits: np.ndarray, start: int) -> None:
        """Logits [k, vocab] of prompt positions start..start+k-1 (row i predicts token start + i + 1)."""
        predicting = max(0, min(len(logits), len(self.prompt_ids) - 1 - start))
        for first in range(0, predicting, PROMPT_ROWS_PER_PASS):
            rows = logits[first : min(first + PROMPT_ROWS_PER_PASS, predicting)]
            for offset, normalizer in enumerate(log_normalizers(rows)):
                position = start + first + offset + 1
                token = self.prompt_ids[position]
                self.entries.append(self.writer.entry(rows[offset], float(normalizer), token, self.texts[position],
                                                      self.writer.token_bytes.raw(token), self.alternatives))
