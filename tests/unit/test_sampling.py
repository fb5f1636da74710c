"""Token choice: greedy, top-k/top-p truncation, penalties and seeds."""

import numpy as np

from serving.engines.base import SamplingParams
from serving.engines.sampling import Sampler

LOGITS = np.array([0.0, 5.0, 4.9, 1.0, -2.0], dtype=np.float32)


def test_temperature_zero_is_argmax():
    assert Sampler(SamplingParams(temperature=0)).choose(LOGITS) == 1


def test_top_k_one_and_tiny_top_p_always_pick_the_best():
    for params in (SamplingParams(top_k=1, seed=0), SamplingParams(top_p=0.01, seed=0)):
        sampler = Sampler(params)
        assert {sampler.choose(LOGITS) for _ in range(50)} == {1}


def test_top_k_two_samples_only_the_two_best():
    sampler = Sampler(SamplingParams(top_k=2, seed=1))
    assert {sampler.choose(LOGITS) for _ in range(200)} == {1, 2}


def draws(seed: int, count: int = 30) -> list[int]:
    sampler = Sampler(SamplingParams(seed=seed))
    return [sampler.choose(LOGITS) for _ in range(count)]


def test_same_seed_same_choices_and_another_seed_others():
    assert draws(42) == draws(42)
    assert draws(42) != draws(43)


def test_presence_penalty_moves_away_from_repeated_tokens():
    sampler = Sampler(SamplingParams(temperature=0, presence_penalty=2.0))
    assert [sampler.choose(LOGITS) for _ in range(2)] == [1, 2]
