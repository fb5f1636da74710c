"""The prefix cache's matching and eviction (no model: a fake slot whose cache rows are the token ids)."""

import numpy as np
import pytest

from serving.engines.prefix_cache import LEFT_TO_COMPUTE, SMALLEST_REUSE, PrefixCache, common_length


def reader(prompt: list[int], reads: list[int] | None = None):
    """`read(length)` of a slot holding `prompt`: [2 layers, 1 head, length, 1] whose values are the token ids."""
    def read(length: int) -> np.ndarray:
        if reads is not None:
            reads.append(length)
        return np.array(prompt[:length], np.float32).reshape(1, 1, length, 1).repeat(2, axis=0)
    return read


def stored(cache: PrefixCache, prompt: list[int]) -> None:
    cache.store(prompt, reader(prompt))


SYSTEM = list(range(100, 140))  # 40 shared tokens


@pytest.mark.parametrize(("first", "second", "expected"), [([1, 2, 3], [1, 2, 4], 2), ([1, 2], [1, 2, 3], 2),
                                                           ([5], [6], 0), ([], [1], 0)])
def test_common_length(first, second, expected):
    assert common_length(np.array(first), np.array(second)) == expected


def test_a_prompt_reuses_the_longest_shared_prefix_and_its_cache_holds_those_tokens():
    cache = PrefixCache(capacity_tokens=1000)
    stored(cache, SYSTEM + [1, 2, 3])
    stored(cache, SYSTEM[:30] + [9] * 10)
    match = cache.longest(SYSTEM + [1, 2, 7, 8])
    assert match.tokens == len(SYSTEM) + 2
    assert match.cache[0, 0, : match.tokens, 0].tolist() == SYSTEM + [1, 2]


def test_at_least_two_tokens_are_left_to_compute_even_for_a_prompt_seen_whole():
    cache = PrefixCache(capacity_tokens=1000)
    stored(cache, SYSTEM)
    assert cache.longest(SYSTEM).tokens == len(SYSTEM) - LEFT_TO_COMPUTE
    assert cache.longest(SYSTEM + [5]).tokens == len(SYSTEM) - 1


def test_a_short_shared_start_is_not_a_hit():
    cache = PrefixCache(capacity_tokens=1000)
    stored(cache, SYSTEM)
    assert cache.longest(SYSTEM[: SMALLEST_REUSE - 1] + [0] * 30) is None
    assert cache.longest(SYSTEM[:SMALLEST_REUSE] + [0] * 30).tokens == SMALLEST_REUSE


def test_the_least_recently_used_entry_is_dropped_first():
    cache = PrefixCache(capacity_tokens=100)
    first, second, third = ([n] * 40 for n in (1, 2, 3))
    stored(cache, first)
    stored(cache, second)
    assert cache.longest(first + [0, 0]) is not None  # first is now the most recently used
    stored(cache, third)  # 120 tokens > 100: one entry goes
    assert cache.longest(second + [0, 0]) is None
    assert cache.longest(first + [0, 0]) is not None and cache.longest(third + [0, 0]) is not None
    assert cache.held_tokens == 80


def test_a_longer_prompt_replaces_the_entry_it_covers_and_a_covered_one_is_not_copied():
    cache = PrefixCache(capacity_tokens=1000)
    stored(cache, SYSTEM)
    stored(cache, SYSTEM + [1, 2, 3])
    assert len(cache.entries) == 1 and cache.held_tokens == len(SYSTEM) + 3
    reads: list[int] = []
    cache.store(SYSTEM[:35], reader(SYSTEM, reads))
    assert reads == [] and len(cache.entries) == 1


def test_prompts_too_short_or_too_long_for_the_cache_are_not_kept():
    cache = PrefixCache(capacity_tokens=50)
    reads: list[int] = []
    cache.store(list(range(SMALLEST_REUSE - 1)), reader(list(range(20)), reads))
    cache.store(list(range(51)), reader(list(range(51)), reads))
    assert reads == [] and not cache.entries
