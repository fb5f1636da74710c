"""Perplexity intervals and the paired change against the base (quantize/fidelity.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantize.fidelity import block_sums, delta_percent, perplexity_interval


def losses(tokens: int, seed: int, mean: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).gamma(2.0, mean / 2.0, size=tokens)


def test_blocks_cover_every_token_once():
    token_nll = losses(1000, seed=1)
    sums, counts = block_sums(token_nll, block_tokens=128)
    assert counts == [128] * 7 + [104]
    assert sum(sums) == pytest.approx(token_nll.sum())


def test_interval_contains_the_perplexity_and_narrows_with_more_text():
    short, long = losses(1024, seed=2), losses(16384, seed=2)
    widths = []
    for token_nll in (short, long):
        low, high = perplexity_interval(*block_sums(token_nll))
        assert low < math.exp(token_nll.mean()) < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_identical_losses_change_nothing():
    sums, counts = block_sums(losses(4096, seed=3))
    assert delta_percent(sums, sums, counts) == (0.0, 0.0, 0.0)


def test_a_uniform_loss_increase_is_its_exponential_in_percent():
    base = losses(4096, seed=4)
    base_sums, counts = block_sums(base)
    variant_sums, _ = block_sums(base + 0.1)
    delta, low, high = delta_percent(variant_sums, base_sums, counts)
    assert delta == pytest.approx((math.exp(0.1) - 1) * 100)
    assert low == pytest.approx(delta) and high == pytest.approx(delta)


def test_paired_interval_is_narrower_than_the_perplexities_own():
    base = losses(8192, seed=5)
    variant = base * 1.1 + np.random.default_rng(6).normal(0, 0.2, size=base.size)
    base_sums, counts = block_sums(base)
    variant_sums, _ = block_sums(variant)
    delta, low, high = delta_percent(variant_sums, base_sums, counts)
    assert low < delta < high
    ppl_low, ppl_high = perplexity_interval(variant_sums, counts)
    base_ppl = math.exp(base.mean())
    assert (high - low) < (ppl_high - ppl_low) / base_ppl * 100 / 2


def test_different_texts_are_refused():
    with pytest.raises(ValueError, match="not the same text"):
        delta_percent([1.0, 2.0], [1.0], [128, 128])
