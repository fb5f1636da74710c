"""serving/token_clock.py: time to first token and gaps, as outputs arrive or as a replica measured them."""

from __future__ import annotations

import pytest

from serving.engines.base import GenerationOutput
from serving.token_clock import TokenClock


def tokens(count: int) -> GenerationOutput:
    return GenerationOutput(text="x" * count, token_ids=[0] * count, prompt_tokens=1, completion_tokens=count)


def test_an_output_of_k_tokens_counts_k_equal_gaps() -> None:
    clock = TokenClock(start=10.0)
    clock.observe(tokens(1), now=10.5)
    clock.observe(tokens(2), now=10.7)
    assert clock.first_token_seconds == pytest.approx(0.5)
    assert clock.gaps == pytest.approx([0.1, 0.1])


def test_a_replica_clock_merged_in_counts_from_when_the_request_was_sent() -> None:
    clock = TokenClock(start=10.0)
    clock.merge(sent_at=10.2, first_token_seconds=0.3, gaps=[0.05])
    clock.merge(sent_at=10.2, first_token_seconds=0.6, gaps=[0.07])  # a second choice: the earlier first token counts
    assert clock.first_token_seconds == pytest.approx(0.5)
    assert clock.gaps == [0.05, 0.07]
