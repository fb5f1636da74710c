"""What a variant costs: $ per 1M tokens, goodput against an SLO, the Pareto front.

Pure functions over numbers (the price table itself is `quantserve.prices`). Shared by the run summary and the tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

SECONDS_PER_HOUR = 3600.0
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Slo:
    """Service-level objective per request: its TTFT and its mean time per output token (TPOT); None means no bound
    on that figure. (The planner's SLOs are on percentiles of a step instead: `loadtest.planner`.)"""

    ttft_ms: float | None = None
    tpot_ms: float | None = None


def usd_per_million_tokens(usd_per_hour: float, tokens_per_second: float) -> float | None:
    """$ per 1M tokens when the hardware produces `tokens_per_second`; None when nothing was produced."""
    if tokens_per_second <= 0 or not math.isfinite(tokens_per_second):
        return None
    tokens_per_hour = tokens_per_second * SECONDS_PER_HOUR
    return usd_per_hour / tokens_per_hour * 1_000_000


def meets_slo(ttft_ms: float | None, tpot_ms: float | None, slo: Slo) -> bool:
    """A request meets the SLO when each bounded figure is known and within its bound.

    A request with a single output token has no time per output token; it passes that bound.
    """
    if slo.ttft_ms is not None and (ttft_ms is None or ttft_ms > slo.ttft_ms):
        return False
    return slo.tpot_ms is None or tpot_ms is None or tpot_ms <= slo.tpot_ms


def goodput_rps(requests: Iterable[tuple[float | None, float | None]], slo: Slo, window_s: float) -> float:
    """Requests per second that succeeded within the SLO; `requests` holds (ttft_ms, tpot_ms) of successes."""
    if window_s <= 0:
        return 0.0
    return sum(meets_slo(ttft, tpot, slo) for ttft, tpot in requests) / window_s


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of points that no other point beats on both axes (lower is better on both), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front: list[int] = []
    best_latency = math.inf
    for index in order:
        if points[index][1] < best_latency:
            front.append(index)
            best_latency = points[index][1]
    return front


def distribution(values: Iterable[float | None]) -> dict[str, float | None]:
    """p50, p90, p99 and mean of the known values (None each when there are none)."""
    known = [value for value in values if value is not None]
    stats = {f"p{q}": percentile(known, q) for q in PERCENTILES}
    return {**stats, "mean": sum(known) / len(known) if known else None}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), as numpy's default; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
