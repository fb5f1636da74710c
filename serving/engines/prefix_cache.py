"""Prompts' keys and values kept in host memory, so a later prompt that starts the same way reuses them.

When a prompt's prefill ends, the batcher copies its cache (the prompt's positions only: those come from
prefill chunks, see prefill_plan.py, so they are the very numbers a prefill of the same tokens would
compute again) into an entry here. A new prompt takes the entry it shares the most leading tokens with, copies
that many positions into its slot and prefills only the rest. Entries are dropped least recently used first
when their positions exceed the budget; an entry whose tokens begin a newer one is dropped for it (the newer
covers it). A copy costs microseconds per token where a prefill costs milliseconds.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SMALLEST_REUSE = 16  # tokens; shorter matches (every chat prompt shares its first few) save next to nothing
LEFT_TO_COMPUTE = 2  # at least this many prompt tokens are prefilled: the last one's logits, and no lone token


@dataclass(frozen=True)
class Match:
    tokens: int  # leading prompt positions to reuse
    cache: np.ndarray  # [2 x layers, kv_heads, >= tokens, head_size] (SlotKVModel.read_cache)


def common_length(first: np.ndarray, second: np.ndarray) -> int:
    """How many leading entries two 1-D arrays share."""
    size = min(first.size, second.size)
    differ = np.flatnonzero(first[:size] != second[:size])
    return int(differ[0]) if differ.size else size


class PrefixCache:
    """Entries keyed by their token ids, within `capacity_tokens` positions in all."""

    def __init__(self, capacity_tokens: int) -> None:
        self.capacity_tokens = capacity_tokens
        self.entries: OrderedDict[bytes, tuple[np.ndarray, np.ndarray]] = OrderedDict()  # oldest use first
        self.held_tokens = 0

    def longest(self, prompt_ids: list[int]) -> Match | None:
        """The entry sharing the most leading tokens with the prompt (at least SMALLEST_REUSE, and leaving
        LEFT_TO_COMPUTE to prefill), or None."""
        prompt = np.asarray(prompt_ids, np.int64)
        limit = prompt.size - LEFT_TO_COMPUTE
        best_key, best = None, 0
        for key, (tokens, _) in self.entries.items():
            shared = min(common_length(prompt, tokens), limit)
            if shared > best:
                best_key, best = key, shared
        if best_key is None or best < SMALLEST_REUSE:
            return None
        self.entries.move_to_end(best_key)
        return Match(best, self.entries[best_key][1])

    def store(self, prompt_ids: list[int], read: Callable[[int], np.ndarray]) -> None:
        """Keep a prompt's cache; `read(length)` copies it out of its slot (called only when it will be kept)."""
        prompt = np.asarray(prompt_ids, np.int64)
        if prompt.size < SMALLEST_REUSE or prompt.size > self.capacity_tokens:
            return
        for key, (tokens, _) in list(self.entries.items()):
            shared = common_length(prompt, tokens)
            if shared == prompt.size:  # an entry already holds this prompt and more
                self.entries.move_to_end(key)
                return
            if shared == tokens.size:  # this prompt covers that entry
                self._drop(key)
        while self.held_tokens + prompt.size > self.capacity_tokens:
            self._drop(next(iter(self.entries)))
        self.entries[prompt.tobytes()] = (prompt, read(prompt.size))
        self.held_tokens += prompt.size

    def _drop(self, key: bytes) -> None:
        tokens, _ = self.entries.pop(key)
        self.held_tokens -= tokens.size
