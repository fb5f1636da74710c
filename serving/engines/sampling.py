"""Next-token choice for one sequence: penalties, temperature, top-k, top-p, seeded randomness."""

from __future__ import annotations

import numpy as np

from serving.engines.base import SamplingParams


class Sampler:
    """Per-request sampler; a seed makes the whole sequence of choices reproducible."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.counts: dict[int, int] = {}

    def choose(self, logits: np.ndarray) -> int:
        logits = self._penalized(logits.astype(np.float32, copy=True))
        if self.params.temperature == 0:
            token = int(np.argmax(logits))
        else:
            token = self._sample(logits / self.params.temperature)
        self.counts[token] = self.counts.get(token, 0) + 1
        return token

    def _penalized(self, logits: np.ndarray) -> np.ndarray:
        if not self.counts or (self.params.presence_penalty == 0 and self.params.frequency_penalty == 0):
            return logits
        tokens = np.fromiter(self.counts.keys(), dtype=np.int64)
        counts = np.fromiter(self.counts.values(), dtype=np.float32)
        logits[tokens] -= self.params.presence_penalty + self.params.frequency_penalty * counts
        return logits

    def _sample(self, logits: np.ndarray) -> int:
        top_k = self.params.top_k
        candidates = np.argpartition(logits, -top_k)[-top_k:] if top_k and top_k < logits.size else None
        if candidates is None:
            candidates = np.arange(logits.size)
        values = logits[candidates]
        order = np.argsort(-values)
        candidates, values = candidates[order], values[order]
        probs = np.exp(values - values[0])
        probs /= probs.sum()
        if self.params.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), self.params.top_p) + 1)
            candidates, probs = candidates[:keep], probs[:keep] / probs[:keep].sum()
        return int(candidates[self.rng.choice(len(candidates), p=probs)])


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max()
    return shifted - np.log(np.exp(shifted).sum())
