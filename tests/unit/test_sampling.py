"""The batched sampler on synthetic logits (no model): greedy edges, the shape of the distributions it draws
from, top-k/top-p/min-p masks, penalties, min_tokens, seeds that do not depend on the batch, NaN rows.

Every test fails on the sampler before the batched rewrite (it had no `BatchSampler`; at temperature 1e-38 its
`logits / temperature` overflowed to NaN and `rng.choice` raised; negative seeds raised in `default_rng`)."""

import numpy as np
import pytest

from serving.engines.base import EngineError, SamplingParams
from serving.engines.sampling import BatchSampler, SamplingFailed, SequenceSampling

EOS = (7,)
VOCAB = 300  # not a multiple of the race's block size: the padding path is exercised too


def logits_like(seed: int, rows: int = 1, vocab: int = VOCAB) -> np.ndarray:
    row = np.random.default_rng(seed).normal(0, 2, vocab).astype(np.float32)
    return np.repeat(row[None], rows, axis=0)


def states(params: SamplingParams, count: int, prompt: list[int] | None = None) -> list[SequenceSampling]:
    return [SequenceSampling.start(params, prompt or [], EOS) for _ in range(count)]


def frequencies(tokens, vocab: int = VOCAB) -> np.ndarray:
    return np.bincount(np.asarray(tokens), minlength=vocab) / len(tokens)


def softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values.astype(np.float64) - values.max())
    return shifted / shifted.sum()


def assert_drawn_from(tokens: list[int], expected: np.ndarray) -> None:
    """The draws' total variation from `expected` is within 1.5 times what sampling noise alone gives."""
    observed = frequencies(tokens, expected.size)
    noise = 0.5 * np.sqrt(2 * expected * (1 - expected) / (np.pi * len(tokens))).sum()
    assert 0.5 * np.abs(observed - expected).sum() < 1.5 * noise + 0.002


def draw(params: SamplingParams, logits: np.ndarray, seed: int = 0) -> list[int]:
    return BatchSampler(np.random.default_rng(seed)).sample(logits, states(params, logits.shape[0]))


@pytest.mark.parametrize("temperature", [0.0, 1e-38, 1e-6, 9e-6])
def test_a_temperature_below_1e_5_is_greedy(temperature):
    logits = logits_like(1, rows=50)
    assert set(draw(SamplingParams(temperature=temperature), logits)) == {int(np.argmax(logits[0]))}


def test_temperature_one_draws_from_the_softmax():
    logits = logits_like(2, rows=20000)
    assert_drawn_from(draw(SamplingParams(), logits), softmax(logits[0]))  # total variation


def test_a_low_temperature_sharpens_and_a_high_one_flattens():
    logits = logits_like(3, rows=20000)
    for temperature in (0.5, 1.7):
        assert_drawn_from(draw(SamplingParams(temperature=temperature), logits), softmax(logits[0] / temperature))


def test_top_k_draws_only_the_k_best_in_their_proportions():
    logits = logits_like(4, rows=8000)
    tokens = draw(SamplingParams(top_k=5), logits)
    best = np.argsort(-logits[0])[:5]
    assert set(tokens) == set(best)
    expected = np.zeros(VOCAB)
    expected[best] = softmax(logits[0][best])
    assert_drawn_from(tokens, expected)


def test_top_p_keeps_the_smallest_nucleus_that_reaches_p():
    logits = logits_like(5, rows=8000)
    probs = softmax(logits[0])
    ranked = np.argsort(-probs)
    nucleus = ranked[: int(np.searchsorted(np.cumsum(probs[ranked]), 0.6)) + 1]
    tokens = draw(SamplingParams(top_p=0.6), logits)
    assert set(tokens) == set(nucleus)
    expected = np.zeros(VOCAB)
    expected[nucleus] = probs[nucleus] / probs[nucleus].sum()
    assert_drawn_from(tokens, expected)


def test_min_p_drops_tokens_less_likely_than_min_p_times_the_best():
    logits = logits_like(6, rows=5000)
    probs = softmax(logits[0])
    allowed = set(np.flatnonzero(probs >= 0.2 * probs.max()))
    assert set(draw(SamplingParams(min_p=0.2), logits)) <= allowed
    assert 1 < len(allowed) < VOCAB


def test_a_tiny_top_p_or_top_k_one_is_the_argmax():
    logits = logits_like(7, rows=200)
    for params in (SamplingParams(top_p=1e-6), SamplingParams(top_k=1), SamplingParams(min_p=1.0)):
        assert set(draw(params, logits)) == {int(np.argmax(logits[0]))}


def run_steps(params: SamplingParams, logits: np.ndarray, steps: int, prompt: list[int] | None = None) -> list[int]:
    state = SequenceSampling.start(params, prompt or [], EOS)
    sampler, tokens = BatchSampler(np.random.default_rng(0)), []
    for _ in range(steps):
        tokens.append(sampler.sample(logits[:1], [state])[0])
        state.record(tokens[-1])
    return tokens


def test_presence_and_frequency_penalties_move_greedy_choices_away_from_repeats():
    logits = np.array([[0.0, 5.0, 4.5, 4.0, -2.0, 0, 0, 0]], np.float32)
    assert run_steps(SamplingParams(temperature=0), logits, 3) == [1, 1, 1]
    assert run_steps(SamplingParams(temperature=0, presence_penalty=0.6), logits, 3) == [1, 2, 1]
    assert run_steps(SamplingParams(temperature=0, frequency_penalty=2.0), logits, 3) == [1, 2, 3]


def test_repetition_penalty_covers_prompt_tokens_and_divides_positive_logits():
    logits = np.array([[0.0, 5.0, 4.5, -1.0, -1.2, 0, 0, 0]], np.float32)
    assert run_steps(SamplingParams(temperature=0, repetition_penalty=1.2), logits, 1, prompt=[1]) == [2]
    # Negative logits are multiplied: -1.0 * 2 = -2 falls below -1.2.
    negative = np.array([[-5.0, -9.0, -9.0, -1.0, -1.2, -9, -9, -9]], np.float32)
    assert run_steps(SamplingParams(temperature=0, repetition_penalty=2.0), negative, 1, prompt=[3]) == [4]


def test_min_tokens_masks_the_end_of_sequence_until_reached():
    logits = np.zeros((1, 10), np.float32)
    logits[0, EOS[0]] = 10.0
    assert run_steps(SamplingParams(temperature=0, min_tokens=2), logits, 3)[:2] != [EOS[0]] * 2
    assert run_steps(SamplingParams(temperature=0, min_tokens=2), logits, 3)[2] == EOS[0]


def seeded_tokens(seed: int, neighbours: list[SamplingParams], steps: int = 40) -> list[int]:
    """A seeded request's tokens over `steps` steps, sampled in a batch beside `neighbours`."""
    logits = logits_like(8, rows=1 + len(neighbours))
    batch = [SequenceSampling.start(SamplingParams(seed=seed, top_p=0.95), [], EOS)]
    batch += [SequenceSampling.start(p, [], EOS) for p in neighbours]
    sampler, tokens = BatchSampler(), []
    for _ in range(steps):
        choices = sampler.sample(logits, batch)
        for state, token in zip(batch, choices, strict=True):
            state.record(token)
        tokens.append(choices[0])
    return tokens


def test_a_seeded_request_draws_the_same_tokens_whatever_else_is_in_the_batch():
    alone = seeded_tokens(1234, [])
    crowd = [SamplingParams(), SamplingParams(seed=5), SamplingParams(temperature=0), SamplingParams(top_k=3)]
    assert seeded_tokens(1234, crowd) == alone
    assert seeded_tokens(1234, crowd[:2]) == alone
    assert seeded_tokens(1235, crowd) != alone


@pytest.mark.parametrize("seed", [-1, -(2**63), 2**63 - 1, 0])
def test_any_signed_64_bit_seed_is_reproducible(seed):
    assert seeded_tokens(seed, []) == seeded_tokens(seed, [SamplingParams()])


def test_a_row_of_nan_fails_alone_and_an_infinite_logit_wins():
    logits = logits_like(9, rows=3)
    logits[1] = np.nan
    logits[2, 17] = np.inf
    choices = BatchSampler().sample(logits, states(SamplingParams(), 3))
    assert isinstance(choices[1], SamplingFailed)
    assert isinstance(choices[0], int) and choices[2] == 17


def test_some_nan_logits_are_never_chosen():
    logits = logits_like(10, rows=2000)
    logits[:, :150] = np.nan
    assert min(draw(SamplingParams(), logits)) >= 150


@pytest.mark.parametrize(("field", "value"), [
    ("temperature", -0.1), ("temperature", 2.5), ("temperature", float("nan")), ("top_p", 0.0), ("top_k", 0),
    ("min_p", 1.5), ("repetition_penalty", 0.0), ("repetition_penalty", float("inf")), ("presence_penalty", 3.0),
    ("min_tokens", -1), ("logprobs", 21), ("prompt_logprobs", -1), ("max_tokens", -1),
])
def test_parameters_the_engine_cannot_honour_are_a_400_naming_the_field(field, value):
    with pytest.raises(EngineError) as refused:
        SamplingParams(**{field: value})
    assert (refused.value.status, refused.value.param) == (400, field)


def test_min_tokens_above_max_tokens_is_a_400():
    with pytest.raises(EngineError) as refused:
        SamplingParams(max_tokens=3, min_tokens=4)
    assert refused.value.param == "min_tokens"
