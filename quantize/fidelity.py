"""Perplexity with a bootstrap interval, and its change against the base model with a paired interval.

Token losses are grouped into blocks of consecutive scored tokens; the bootstrap resamples blocks, which keeps
the dependence between neighbouring tokens inside each resampled unit. The change against the base resamples the
same blocks for both models (paired), so text that is hard for both does not widen the interval of the change.
"""

from __future__ import annotations

import numpy as np

BLOCK_TOKENS = 128
RESAMPLES = 2000
SEED = 0  # fixed: the same losses always give the same interval


def block_sums(token_nll: np.ndarray, block_tokens: int = BLOCK_TOKENS) -> tuple[list[float], list[int]]:
    """Summed negative log-likelihood and token count of each block of `block_tokens` consecutive tokens."""
    starts = range(0, len(token_nll), block_tokens)
    sums = [float(token_nll[s : s + block_tokens].sum()) for s in starts]
    counts = [len(token_nll[s : s + block_tokens]) for s in starts]
    return sums, counts


def _resample_indices(blocks: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, blocks, size=(resamples, blocks))


def perplexity_interval(block_nll: list[float], block_counts: list[int], level: float = 0.95,
                        resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the perplexity over blocks."""
    nll, counts = np.asarray(block_nll), np.asarray(block_counts)
    picks = _resample_indices(len(nll), resamples, seed)
    ppl = np.exp(nll[picks].sum(axis=1) / counts[picks].sum(axis=1))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ppl, [tail, 100 - tail])
    return float(low), float(high)


def delta_percent(variant_nll: list[float], base_nll: list[float], block_counts: list[int], level: float = 0.95,
                  resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float, float]:
    """Perplexity change against the base in %, with its paired bootstrap interval: (delta, low, high).

    Both lists score the same tokens in the same blocks (checked by the caller through the text hash).
    """
    variant, base, counts = np.asarray(variant_nll), np.asarray(base_nll), np.asarray(block_counts)
    if variant.shape != base.shape:
        raise ValueError(f"{len(variant)} blocks against the base's {len(base)}: not the same text")
    point = np.exp((variant.sum() - base.sum()) / counts.sum()) - 1
    picks = _resample_indices(len(variant), resamples, seed)
    tokens = counts[picks].sum(axis=1)
    ratios = np.exp((variant[picks].sum(axis=1) - base[picks].sum(axis=1)) / tokens) - 1
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return float(point * 100), float(low * 100), float(high * 100)
