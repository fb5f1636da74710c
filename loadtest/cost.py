"""What a variant costs: price lookup, $ per 1M tokens, goodput against an SLO, the Pareto front.

Pure functions over numbers; reading `prices.yaml` is the only I/O. Shared by the run summary and the tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_PRICES_PATH = Path(__file__).with_name("prices.yaml")
SECONDS_PER_HOUR = 3600.0


class PriceError(ValueError):
    """The price table is missing, invalid, or lacks a profile; the message is meant for the user."""


class PriceProfile(BaseModel):
    """One hardware profile: what one replica's machine costs per hour, and where that figure came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    usd_per_hour: float = Field(gt=0)
    source: str = Field(min_length=1)
    recorded: date = Field(description="Date the price was recorded (YYYY-MM-DD)")


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: dict[str, PriceProfile]


@dataclass(frozen=True)
class Slo:
    """Service-level objective per request; None means no bound on that figure."""

    ttft_ms: float | None = None
    itl_ms: float | None = None


def load_prices(path: str | Path = DEFAULT_PRICES_PATH) -> PriceTable:
    try:
        raw = yaml.safe_load(Path(path).read_text())
        return PriceTable.model_validate(raw)
    except FileNotFoundError:
        raise PriceError(f"price table {path} not found") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PriceError(f"invalid price table {path}: {problems}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise PriceError(f"cannot read price table {path}: {exc}".splitlines()[0]) from None


def price_per_hour(table: PriceTable, profile: str, replicas: int = 1) -> float:
    """$ per hour for `replicas` replicas on `profile`."""
    if profile not in table.profiles:
        known = ", ".join(sorted(table.profiles))
        raise PriceError(f"unknown hardware profile {profile!r}; prices.yaml has {known}")
    if replicas < 1:
        raise PriceError(f"replicas must be at least 1, got {replicas}")
    return table.profiles[profile].usd_per_hour * replicas


def usd_per_million_tokens(usd_per_hour: float, tokens_per_second: float) -> float | None:
    """$ per 1M tokens when the hardware produces `tokens_per_second`; None when nothing was produced."""
    if tokens_per_second <= 0 or not math.isfinite(tokens_per_second):
        return None
    tokens_per_hour = tokens_per_second * SECONDS_PER_HOUR
    return usd_per_hour / tokens_per_hour * 1_000_000


def meets_slo(ttft_ms: float | None, itl_ms: float | None, slo: Slo) -> bool:
    """A request meets the SLO when each bounded figure is known and within its bound.

    A request with a single output token has no inter-token latency; it passes the ITL bound.
    """
    if slo.ttft_ms is not None and (ttft_ms is None or ttft_ms > slo.ttft_ms):
        return False
    return slo.itl_ms is None or itl_ms is None or itl_ms <= slo.itl_ms


def goodput_rps(requests: Iterable[tuple[float | None, float | None]], slo: Slo, window_s: float) -> float:
    """Requests per second that succeeded within the SLO; `requests` holds (ttft_ms, itl_ms) of successes."""
    if window_s <= 0:
        return 0.0
    return sum(meets_slo(ttft, itl, slo) for ttft, itl in requests) / window_s


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


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100), as numpy's default; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
