"""From raw request records to the figures of a run: per variant and load level, measured phase only.

Every figure in results.json, report.md and report.html comes from `summarize`; the renderers only format.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from loadtest.cost import Slo, goodput_rps, meets_slo, pareto_front, percentile, usd_per_million_tokens
from loadtest.records import RequestRecord

PERCENTILES = (50, 90, 99)
TOKEN_FIELDS = ("prompt_tokens", "output_tokens", "total_tokens")


@dataclass(frozen=True)
class VariantCost:
    """What the replicas behind one swept label cost."""

    label: str
    hardware_profile: str
    replicas: int
    usd_per_hour: float


@dataclass
class LevelSummary:
    """Figures for one label (variant) at one load level. Token totals sum the successful measured records."""

    label: str
    mode: str
    level: float
    hardware_profile: str
    usd_per_hour: float
    requests: int
    errors: int
    window_s: float  # first measured request sent .. last one finished
    prompt_tokens: int
    output_tokens: int
    total_tokens: int
    requests_per_s: float
    output_tokens_per_s: float
    total_tokens_per_s: float
    usd_per_m_output_tokens: float | None
    usd_per_m_total_tokens: float | None
    slo_met: int
    slo_attainment: float  # share of measured requests that succeeded within the SLO
    goodput_rps: float
    ttft_ms: dict[str, float | None]
    itl_ms: dict[str, float | None]
    e2e_ms: dict[str, float | None]
    answered_by: dict[str, int] = field(default_factory=dict)  # x-quantserve-variant values seen
    error_kinds: dict[str, int] = field(default_factory=dict)
    pareto: bool = False  # on the cost / p90 end-to-end latency front

    def as_dict(self) -> dict:
        return asdict(self)


def measured(records: Iterable[RequestRecord]) -> list[RequestRecord]:
    return [record for record in records if record.phase == "measure"]


def label_of(record: RequestRecord) -> str:
    return record.run_label or record.variant or record.model


def summarize(records: Iterable[RequestRecord], costs: dict[str, VariantCost], slo: Slo) -> list[LevelSummary]:
    groups: dict[tuple[str, float], list[RequestRecord]] = defaultdict(list)
    for record in measured(records):
        groups[(label_of(record), record.level)].append(record)
    summaries = [_summarize_group(group, costs[label]) for (label, _), group in sorted(groups.items())]
    for summary, group in zip(summaries, (groups[key] for key in sorted(groups)), strict=True):
        _apply_slo(summary, group, slo)
    mark_pareto(summaries)
    return summaries


def _summarize_group(group: list[RequestRecord], cost: VariantCost) -> LevelSummary:
    ok = [record for record in group if record.ok]
    window_s = max(r.end_s for r in group) - min(r.start_s for r in group)
    tokens = {name: sum(getattr(r, name) or 0 for r in ok) for name in TOKEN_FIELDS}
    per_s = {name: (count / window_s if window_s > 0 else 0.0) for name, count in tokens.items()}
    return LevelSummary(
        label=cost.label, mode=group[0].mode, level=group[0].level, hardware_profile=cost.hardware_profile,
        usd_per_hour=cost.usd_per_hour, requests=len(group), errors=len(group) - len(ok), window_s=window_s,
        **tokens, requests_per_s=len(ok) / window_s if window_s > 0 else 0.0,
        output_tokens_per_s=per_s["output_tokens"], total_tokens_per_s=per_s["total_tokens"],
        usd_per_m_output_tokens=usd_per_million_tokens(cost.usd_per_hour, per_s["output_tokens"]),
        usd_per_m_total_tokens=usd_per_million_tokens(cost.usd_per_hour, per_s["total_tokens"]),
        slo_met=0, slo_attainment=0.0, goodput_rps=0.0,
        ttft_ms=latency_percentiles(r.ttft_ms for r in ok), itl_ms=latency_percentiles(r.itl_ms for r in ok),
        e2e_ms=latency_percentiles(r.e2e_ms for r in ok),
        answered_by=dict(Counter(r.variant or "?" for r in ok)),
        error_kinds=dict(Counter(r.error for r in group if not r.ok)),
    )


def _apply_slo(summary: LevelSummary, group: list[RequestRecord], slo: Slo) -> None:
    timings = [(r.ttft_ms, r.itl_ms) for r in group if r.ok]
    summary.slo_met = sum(meets_slo(ttft, itl, slo) for ttft, itl in timings)
    summary.slo_attainment = summary.slo_met / summary.requests if summary.requests else 0.0
    summary.goodput_rps = goodput_rps(timings, slo, summary.window_s)


def latency_percentiles(values: Iterable[float | None]) -> dict[str, float | None]:
    known = [value for value in values if value is not None]
    return {f"p{q}": percentile(known, q) for q in PERCENTILES}


def mark_pareto(summaries: list[LevelSummary]) -> None:
    """Mark the points no other point beats on both $ per 1M output tokens and p90 end-to-end latency."""
    priced = [s for s in summaries if s.usd_per_m_output_tokens is not None and s.e2e_ms["p90"] is not None]
    for index in pareto_front([(s.usd_per_m_output_tokens, s.e2e_ms["p90"]) for s in priced]):
        priced[index].pareto = True


def cheapest_meeting_slo(summaries: list[LevelSummary], attainment: float) -> dict[str, LevelSummary | None]:
    """Per label, its cheapest level ($ per 1M output tokens) where enough requests met the SLO, without errors."""
    best: dict[str, LevelSummary | None] = {s.label: None for s in summaries}
    for summary in summaries:
        if not _meets(summary, attainment):
            continue
        current = best[summary.label]
        if current is None or summary.usd_per_m_output_tokens < current.usd_per_m_output_tokens:
            best[summary.label] = summary
    return best


def cheapest_overall(per_label: dict[str, LevelSummary | None]) -> LevelSummary | None:
    candidates = [summary for summary in per_label.values() if summary is not None]
    return min(candidates, key=lambda s: s.usd_per_m_output_tokens, default=None)


def _meets(summary: LevelSummary, attainment: float) -> bool:
    return summary.errors == 0 and summary.usd_per_m_output_tokens is not None and summary.slo_attainment >= attainment


def error_counts(records: Iterable[RequestRecord]) -> dict[str, int]:
    """Every error message of the run, warm-up included, with how often it happened."""
    return dict(Counter(record.error for record in records if not record.ok).most_common())


def totals(records: list[RequestRecord]) -> dict[str, int]:
    ok = [record for record in measured(records) if record.ok]
    return {
        "requests": len(records),
        "warmup_requests": sum(record.phase == "warmup" for record in records),
        "measured_requests": len(measured(records)),
        "errors": sum(not record.ok for record in records),
        "prompt_tokens": sum(record.prompt_tokens or 0 for record in ok),
        "output_tokens": sum(record.output_tokens or 0 for record in ok),
        "total_tokens": sum(record.total_tokens or 0 for record in ok),
    }


def build_results(meta: dict, records: list[RequestRecord], costs: dict[str, VariantCost], slo: Slo,
                  attainment: float) -> dict:
    """Everything results.json holds: `meta` (run id, status, config, versions, machine, server) plus figures."""
    summaries = summarize(records, costs, slo)
    per_label = cheapest_meeting_slo(summaries, attainment)
    overall = cheapest_overall(per_label)
    return {
        **meta,
        "slo": {"ttft_ms": slo.ttft_ms, "itl_ms": slo.itl_ms, "attainment": attainment},
        "variants": [asdict(cost) for cost in costs.values()],
        "totals": totals(records),
        "errors": error_counts(records),
        "summaries": [summary.as_dict() for summary in summaries],
        "cheapest_meeting_slo": {
            "per_variant": {label: (s.as_dict() if s else None) for label, s in per_label.items()},
            "overall": overall.label if overall else None,
            "overall_level": overall.level if overall else None,
        },
    }


def summaries_from(results: dict) -> list[LevelSummary]:
    return [LevelSummary(**summary) for summary in results["summaries"]]
