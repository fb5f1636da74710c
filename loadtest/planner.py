"""Capacity planning from measured load tests: for a target request rate, workload, SLOs and quality floor, how many
replicas of each variant, what they cost, and which is the cheapest that meets everything.

Pure functions over results.json figures. Each measured step of a variant is a point of its per-replica goodput
curve: the rate one replica was offered and kept up with, and the p90 latencies it had there. A point meets the SLO
when it had no errors, achieved what it was offered, and its p90s are within the bounds. A variant's capacity is its
highest such point below which no measured point failed; the plan runs every replica at or below a measured point,
never above the highest measured rate. Replicas are assumed to scale linearly, which a plan states when it uses
more replicas than were measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

HOURS_PER_MONTH = 730.0  # 365 × 24 / 12
KEPT_UP = 0.9  # a rate-mode step kept up when it achieved this share of what it was offered


@dataclass(frozen=True)
class Target:
    """What to serve and how well. Token counts are per request as the server counts them (usage)."""

    rate_rps: float
    ttft_p90_ms: float
    itl_p90_ms: float
    e2e_p90_ms: float | None = None
    input_tokens: float | None = None  # None: as measured
    output_tokens: float | None = None
    max_ppl_increase_pct: float | None = None
    min_greedy_agreement: float | None = None
    headroom: float = 0.2  # plan capacity for rate × (1 + headroom)
    workload_tolerance: float = 0.25  # a measured step's mean lengths may differ this much from the target's
    hours_per_month: float = HOURS_PER_MONTH

    @property
    def capacity_rps(self) -> float:
        return self.rate_rps * (1 + self.headroom)


@dataclass(frozen=True)
class Point:
    """One measured step of one variant, as the plan sees it."""

    run_id: str
    label: str
    hardware_profile: str
    measured_replicas: int
    mode: str
    level: float
    per_replica_rps: float  # offered per replica (rate mode), achieved per replica (users mode)
    requests: int
    errors: int
    itl_gaps: int
    ttft_p90_ms: float | None
    itl_p90_ms: float | None
    e2e_p90_ms: float | None
    prompt_tokens: float | None
    output_tokens: float | None
    kept_up: bool

    def rests_on(self) -> str:
        level = f"{self.level:g} users" if self.mode == "users" else f"{self.level:g} req/s"
        return (f"run {self.run_id}, {self.label} @ {level} ({self.measured_replicas} replica(s), "
                f"{self.requests} requests, {self.itl_gaps} token gaps)")


@dataclass(frozen=True)
class Option:
    """A way to serve the target: `replicas` replicas of a variant, each at most at `point`'s measured rate."""

    point: Point
    replicas: int
    usd_per_hour_per_replica: float
    monthly_usd: float
    usd_per_m_output: float | None
    usd_per_m_total: float | None
    notes: tuple[str, ...]


@dataclass
class Verdict:
    """One variant on one hardware profile: its quality, its measured points, and its cheapest option, if any."""

    label: str
    hardware_profile: str
    quality: dict
    points: list[Point]
    options: list[Option] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why it cannot serve the target

    @property
    def best(self) -> Option | None:
        return min(self.options, key=lambda option: option.monthly_usd, default=None)


def slo_misses(point: Point, target: Target) -> list[str]:
    """What keeps a measured point from meeting the SLO ([] when it meets it)."""
    misses = [] if point.errors == 0 else [f"{point.errors} errors"]
    if not point.kept_up:
        misses.append("achieved less than offered")
    bounds = (("TTFT", point.ttft_p90_ms, target.ttft_p90_ms), ("ITL", point.itl_p90_ms, target.itl_p90_ms),
              ("E2E", point.e2e_p90_ms, target.e2e_p90_ms))
    for name, value, bound in bounds:
        if bound is not None and (value is None or value > bound):
            misses.append(f"{name} p90 {_ms(value)} > {bound:g} ms")
    return misses


def workload_mismatch(point: Point, target: Target) -> str:
    """Why a point's measured workload is not the target's ("" when it matches within the tolerance)."""
    for name, measured, wanted in (("prompt", point.prompt_tokens, target.input_tokens),
                                   ("output", point.output_tokens, target.output_tokens)):
        if wanted is None:
            continue
        if measured is None or abs(measured - wanted) > target.workload_tolerance * wanted:
            return f"measured {name} tokens {_num(measured)} per request, target {wanted:g}"
    return ""


def quality_misses(quality: dict, target: Target) -> list[str]:
    misses = []
    increase, agreement = quality.get("ppl_increase_pct"), quality.get("greedy_agreement")
    if target.max_ppl_increase_pct is not None:
        if increase is None:
            misses.append(f"perplexity increase not measured (floor +{target.max_ppl_increase_pct:g} %)")
        elif increase > target.max_ppl_increase_pct:
            misses.append(f"perplexity +{_num(increase)} % > +{target.max_ppl_increase_pct:g} %")
    if target.min_greedy_agreement is not None:
        if agreement is None:
            misses.append(f"greedy agreement not measured (floor {target.min_greedy_agreement:g})")
        elif agreement < target.min_greedy_agreement:
            misses.append(f"greedy agreement {_num(agreement)} < {target.min_greedy_agreement:g}")
    return misses


def usable_points(points: list[Point], target: Target) -> tuple[list[Point], list[str]]:
    """The points the plan may run a replica at: matching the workload, meeting the SLO, with no failing point at a
    lower measured rate (the goodput curve up to its first miss). Also why the others were left out."""
    matching, reasons = [], []
    for point in points:
        mismatch = workload_mismatch(point, target)
        if mismatch:
            reasons.append(f"{point.level:g}: {mismatch}")
        else:
            matching.append(point)
    usable = []
    for point in sorted(matching, key=lambda p: p.per_replica_rps):
        misses = slo_misses(point, target)
        if misses:
            reasons.append(f"at {point.per_replica_rps:.3g} req/s per replica: {', '.join(misses)}")
            break
        usable.append(point)
    return usable, reasons


def option_for(point: Point, target: Target, usd_per_hour: float, highest_rps: float) -> Option:
    replicas = max(1, math.ceil(target.capacity_rps / point.per_replica_rps - 1e-9))
    monthly = replicas * usd_per_hour * target.hours_per_month
    output = target.output_tokens or point.output_tokens
    prompt = target.input_tokens or point.prompt_tokens
    tokens_per_month = target.rate_rps * 3600 * target.hours_per_month
    per_m_output = monthly / (tokens_per_month * output) * 1e6 if output else None
    per_m_total = monthly / (tokens_per_month * (output + prompt)) * 1e6 if output and prompt else None
    return Option(point, replicas, usd_per_hour, monthly, per_m_output, per_m_total,
                  tuple(_notes(point, replicas, target, highest_rps)))


def _notes(point: Point, replicas: int, target: Target, highest_rps: float) -> list[str]:
    each = target.rate_rps / replicas
    notes = [f"each replica serves {each:.3g} req/s ({target.capacity_rps / replicas:.3g} with "
             f"{target.headroom:.0%} headroom), at or below the measured {point.per_replica_rps:.3g} req/s"]
    if replicas > point.measured_replicas:
        notes.append(f"assumes replicas scale linearly: measured with {point.measured_replicas}, planned {replicas}")
    if point.per_replica_rps >= highest_rps:
        notes.append("the highest measured rate still met the SLO: capacity may be higher, not measured")
    return notes


def judge(verdict: Verdict, target: Target, usd_per_hour: float) -> Verdict:
    """Fill the verdict's options (every usable point) or its reasons."""
    verdict.reasons = quality_misses(verdict.quality, target)
    usable, left_out = usable_points(verdict.points, target)
    if not usable:
        verdict.reasons += left_out or ["no measured points"]
    if verdict.reasons:
        return verdict
    highest = max(point.per_replica_rps for point in verdict.points)
    verdict.options = [option_for(point, target, usd_per_hour, highest) for point in usable]
    return verdict


def recommend(verdicts: list[Verdict]) -> Option | None:
    """The cheapest option; at equal cost the better quality, then the lower p90 TTFT."""
    usable = [verdict for verdict in verdicts if verdict.best is not None]
    best = min(usable, key=_preference, default=None)
    return best.best if best else None


def _preference(verdict: Verdict) -> tuple[float, float, float]:
    increase = verdict.quality.get("ppl_increase_pct")
    return (round(verdict.best.monthly_usd, 6), math.inf if increase is None else increase,
            verdict.best.point.ttft_p90_ms or math.inf)


def refusal(verdicts: list[Verdict], target: Target) -> str:
    """One line: why no variant can serve the target."""
    why = "; ".join(f"{v.label} on {v.hardware_profile}: {v.reasons[0]}" for v in verdicts if v.reasons)
    return f"no variant meets {describe_target(target)}: {why or 'no measured variants'}"


def describe_target(target: Target) -> str:
    parts = [f"{target.rate_rps:g} req/s", f"TTFT p90 ≤ {target.ttft_p90_ms:g} ms",
             f"ITL p90 ≤ {target.itl_p90_ms:g} ms"]
    if target.e2e_p90_ms is not None:
        parts.append(f"E2E p90 ≤ {target.e2e_p90_ms:g} ms")
    if target.max_ppl_increase_pct is not None:
        parts.append(f"perplexity ≤ +{target.max_ppl_increase_pct:g} %")
    if target.min_greedy_agreement is not None:
        parts.append(f"greedy agreement ≥ {target.min_greedy_agreement:g}")
    return ", ".join(parts)


def _ms(value: float | None) -> str:
    return "unmeasured" if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"


def _num(value: float | None) -> str:
    return "unmeasured" if value is None else f"{value:.3g}"
