"""Chunk planning for chunked prefill (no model): chunk sizes never leave or run a lone token, chunking off runs the
prompt whole, and the size while streams decode settles where a chunk takes `share` of a decode step."""

import pytest

from serving.engines.prefill_plan import SMALLEST_CHUNK, ChunkPlanner, fitted


@pytest.mark.parametrize(("remaining", "limit", "expected"), [
    (100, 10, 10), (11, 10, 11), (12, 10, 10), (10, 10, 10), (1, 10, 1), (2, 10, 2), (5, 1, 2), (3, 1, 3),
])
def test_a_chunk_never_leaves_one_token_behind_nor_runs_one_alone(remaining, limit, expected):
    assert fitted(remaining, limit) == expected


def test_every_plan_covers_the_prompt_in_chunks_of_two_or_more():
    for prompt in range(2, 60):
        for limit in range(1, 12):
            chunks, left = [], prompt
            while left:
                chunks.append(fitted(left, limit))
                left -= chunks[-1]
            assert sum(chunks) == prompt and min(chunks) >= SMALLEST_CHUNK


def test_without_chunking_the_prompt_runs_whole_even_beside_streams():
    planner = ChunkPlanner(max_tokens=0)
    assert planner.size(2000, decoding=True) == planner.size(2000, decoding=False) == 2000
    planner.observe(4, chunk_seconds=1.0, decode_seconds=0.01)
    assert planner.size(2000, decoding=True) == 2000


def test_with_no_stream_decoding_a_prompt_runs_in_chunks_of_max_tokens():
    planner = ChunkPlanner(max_tokens=512)
    assert planner.size(2000, decoding=False) == 512
    assert planner.size(300, decoding=False) == 300


def simulate(planner: ChunkPlanner, fixed: float, per_token: float, decode: float, iterations: int) -> list[float]:
    """Chunk times of `iterations` iterations on a model whose chunk costs fixed + per_token x tokens."""
    times = []
    for _ in range(iterations):
        tokens = planner.size(10_000, decoding=True)
        times.append(fixed + per_token * tokens)
        planner.observe(tokens, times[-1], decode)
    return times


@pytest.mark.parametrize(("fixed", "per_token", "decode", "share"), [
    (0.010, 0.0044, 0.025, 0.8), (0.010, 0.0044, 0.025, 1.0), (0.002, 0.001, 0.060, 0.5), (0.0, 0.0035, 0.065, 0.8),
])
def test_the_chunk_beside_streams_settles_near_share_of_a_decode_step(fixed, per_token, decode, share):
    times = simulate(ChunkPlanner(max_tokens=512, share=share), fixed, per_token, decode, 60)
    # The size is a whole number of tokens: the settled chunk is within one token's time of the target.
    assert all(abs(t - share * decode) <= per_token + 1e-9 for t in times[-10:])


def test_when_even_the_smallest_chunk_costs_more_than_the_target_it_stays_smallest():
    planner = ChunkPlanner(max_tokens=512, share=0.5)
    simulate(planner, fixed=0.05, per_token=0.004, decode=0.02, iterations=20)
    assert planner.size(10_000, decoding=True) == SMALLEST_CHUNK


def test_the_chunk_beside_streams_never_exceeds_max_tokens():
    planner = ChunkPlanner(max_tokens=64, share=1.0)
    simulate(planner, fixed=0.0, per_token=1e-6, decode=1.0, iterations=40)
    assert planner.size(10_000, decoding=True) == 64


@pytest.mark.parametrize(("max_tokens", "share"), [(-1, 0.8), (16, 0.0)])
def test_bad_settings_are_refused(max_tokens, share):
    with pytest.raises(ValueError):
        ChunkPlanner(max_tokens=max_tokens, share=share)
