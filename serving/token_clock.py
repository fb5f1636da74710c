"""When a request's tokens arrived: the time to its first token and the gaps between later ones. The router keeps
one per request; a text replica keeps one for a non-streaming call and returns it with the output."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from serving.engines.base import GenerationOutput


@dataclass
class TokenClock:
    """`start`: when the clock started (time.monotonic()). An output carrying k tokens counts k equal gaps."""

    start: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    gaps: list[float] = field(default_factory=list)
    last_token_at: float | None = None

    def observe(self, output: GenerationOutput, now: float | None = None) -> None:
        now, tokens = time.monotonic() if now is None else now, len(output.token_ids)
        if self.first_token_at is None:
            self.first_token_at = now
            tokens -= 1
        elif tokens:
            self.gaps.extend([(now - self.last_token_at) / tokens] * tokens)
        self.last_token_at = now

    @property
    def first_token_seconds(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.start

    def merge(self, sent_at: float, first_token_seconds: float | None, gaps: list[float]) -> None:
        """Take in what another clock measured (a replica's, started when the router sent it the request at
        `sent_at` on this clock): the earlier first token of the two, and its gaps."""
        if first_token_seconds is not None:
            first = sent_at + first_token_seconds
            self.first_token_at = first if self.first_token_at is None else min(self.first_token_at, first)
        self.gaps.extend(gaps)
