"""How many prompt tokens the batcher prefills in one iteration (chunked prefill).

While no stream decodes, a prompt runs in chunks of up to `max_tokens` (a bound on the forward pass's
temporaries; on this CPU a chunk of 128 tokens or more costs about the same per token as one pass). While
streams decode, every iteration runs their decode step and then one prompt chunk, so the chunk is what the
streams' next token waits for: it is sized to take about `share` times as long as the decode step, which keeps
their inter-token latency within about (1 + share) times its usual value while a long prompt arrives. Prefill
is compute-bound and a decode step is not, so that chunk is small (a few tokens on one core), and the size
follows the measured times of the last iterations (a multiplicative step towards the target, damped).

A chunk is never a single token when more than one is left: ONNX Runtime's matrix kernels take another path for
one row, whose keys and values differ in the last bits from the same token's inside a longer chunk. With chunks
of two or more, a prompt's cache is the same whatever the chunking (and so is a prefix reused from it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SMALLEST_CHUNK = 2
FIRST_CHUNK = 4  # before any measurement; the next iterations find the size
DAMPING = 0.5  # exponent of each step towards the target: a noisy iteration moves the size by its square root


def fitted(remaining: int, limit: int) -> int:
    """At most `limit` of the `remaining` tokens, never leaving exactly one behind, never one alone unless the
    prompt has only one left."""
    tokens = min(remaining, max(limit, SMALLEST_CHUNK))
    if remaining - tokens == 1:
        tokens += 1
    return tokens


@dataclass
class ChunkPlanner:
    """`max_tokens` 0 turns chunking off: each prompt runs whole, and running streams wait for it (the
    behaviour before chunked prefill). `share`: the decode step's time a chunk may add to an iteration."""

    max_tokens: int = 512
    share: float = 0.8
    decoding_tokens: float = FIRST_CHUNK  # the chunk size while streams decode, adapted by `observe`

    def __post_init__(self) -> None:
        if self.max_tokens < 0 or not self.share > 0:
            raise ValueError(f"max_tokens must be >= 0 and share > 0; got {self.max_tokens}, {self.share}")

    def size(self, remaining: int, decoding: bool) -> int:
        """Tokens of the next chunk of a prompt with `remaining` tokens to prefill."""
        if self.max_tokens == 0:
            return remaining
        limit = min(self.max_tokens, math.floor(self.decoding_tokens)) if decoding else self.max_tokens
        return fitted(remaining, limit)

    def observe(self, tokens: int, chunk_seconds: float, decode_seconds: float) -> None:
        """One iteration ran a decode step in `decode_seconds` and a chunk of `tokens` in `chunk_seconds`."""
        if self.max_tokens == 0 or chunk_seconds <= 0 or decode_seconds <= 0:
            return
        wanted = tokens * self.share * decode_seconds / chunk_seconds
        step = (wanted / self.decoding_tokens) ** DAMPING
        self.decoding_tokens = min(max(self.decoding_tokens * step, SMALLEST_CHUNK), self.max_tokens)
