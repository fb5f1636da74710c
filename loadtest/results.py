"""From raw request records to the figures of a run: per variant and load level, measured phase only.

Every figure in results.json, summary.csv, report.md and report.html comes from `summarize`; the renderers only
format. Latencies: TTFT and E2E from when each request was due (its scheduled arrival in rate mode), ITL over every
gap between streamed tokens of the step, TPOT one value per request (its mean gap), each as p50/p90/p99/mean.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict

from loadtest.cost import Slo, distribution, goodput_rps, meets_slo, percentile, usd_per_million_tokens
from loadtest.levels import LevelSummary, StepWindow, VariantCost
from loadtest.records import RequestRecord
from loadtest.selection import cheapest_meeting_slo, cheapest_overall, mark_pareto

TOKEN_FIELDS = ("prompt_tokens", "output_tokens", "total_tokens")
__all__ = ["LevelSummary", "StepWindow", "VariantCost", "build_results", "summaries_from", "summarize"]


def measured(records: Iterable[RequestRecord]) -> list[RequestRecord]:
    return [record for record in records if record.phase == "measure"]


def label_of(record: RequestRecord) -> str:
    return record.run_label or record.variant or record.model


def summarize(records: list[RequestRecord], costs: dict[str, VariantCost], slo: Slo,
              windows: dict[tuple[str, float], StepWindow] | None = None) -> list[LevelSummary]:
    groups: dict[tuple[str, float], list[RequestRecord]] = defaultdict(list)
    for record in measured(records):
        groups[(label_of(record), record.level)].append(record)
    summaries = []
    for key in sorted(groups):
        summary = _summarize_group(groups[key], costs[key[0]])
        _apply_slo(summary, groups[key], slo)
        _apply_window(summary, records, (windows or {}).get(key))
        summaries.append(summary)
    mark_pareto(summaries)
    return summaries


def _summarize_group(group: list[RequestRecord], cost: VariantCost) -> LevelSummary:
    ok = [record for record in group if record.ok]
    window_s = max(r.end_s for r in group) - min(r.start_s for r in group)
    tokens = {name: sum(getattr(r, name) or 0 for r in ok) for name in TOKEN_FIELDS}
    per_s = {name: (count / window_s if window_s > 0 else 0.0) for name, count in tokens.items()}
    gaps = [gap for record in ok for gap in record.token_gaps_ms]
    requests_per_s = len(ok) / window_s if window_s > 0 else 0.0
    return LevelSummary(
        label=cost.label, mode=group[0].mode, level=group[0].level, hardware_profile=cost.hardware_profile,
        usd_per_hour=cost.usd_per_hour, requests=len(group), errors=len(group) - len(ok), window_s=window_s,
        **tokens, requests_per_s=requests_per_s, achieved_rps=requests_per_s,
        output_tokens_per_s=per_s["output_tokens"], total_tokens_per_s=per_s["total_tokens"],
        usd_per_m_output_tokens=usd_per_million_tokens(cost.usd_per_hour, per_s["output_tokens"]),
        usd_per_m_total_tokens=usd_per_million_tokens(cost.usd_per_hour, per_s["total_tokens"]),
        ttft_ms=distribution(r.ttft_ms for r in ok), itl_ms=distribution(gaps),
        tpot_ms=distribution(r.tpot_ms for r in ok), e2e_ms=distribution(r.e2e_ms for r in ok), itl_gaps=len(gaps),
        schedule_lag_ms=distribution(r.lag_ms for r in group), cap_hits=sum(r.waited_for_user for r in group),
        prompt_len=length_stats(r.prompt_tokens for r in ok), output_len=length_stats(r.output_tokens for r in ok),
        prompt_reused=reused_share(ok),
        short_outputs=sum((r.output_tokens or 0) < r.max_tokens for r in ok if r.endpoint == "chat"),
        answered_by=dict(Counter(r.variant or "?" for r in ok)),
        error_kinds=dict(Counter(r.error for r in group if not r.ok)),
    )


def _apply_slo(summary: LevelSummary, group: list[RequestRecord], slo: Slo) -> None:
    timings = [(r.ttft_ms, r.tpot_ms) for r in group if r.ok]
    summary.slo_met = sum(meets_slo(ttft, tpot, slo) for ttft, tpot in timings)
    summary.slo_attainment = summary.slo_met / summary.requests if summary.requests else 0.0
    summary.goodput_rps = goodput_rps(timings, slo, summary.window_s)


def _apply_window(summary: LevelSummary, records: list[RequestRecord], window: StepWindow | None) -> None:
    """Offered and achieved rates over the step's measured window, when its Locust process reported one."""
    if window is None or window.length_s <= 0:
        return
    mine = [r for r in records if label_of(r) == summary.label and r.level == summary.level]
    finished = sum(r.ok and window.measure_start_s <= r.end_s < window.measure_end_s for r in mine)
    summary.achieved_rps = finished / window.length_s
    summary.stopped_early = window.stopped_early
    if summary.mode == "rate":
        summary.offered_rps = (window.arrivals_due or 0) / window.length_s
        summary.arrivals, summary.rate_users = window.arrivals, window.rate_users


def reused_share(records: list[RequestRecord]) -> float | None:
    """Prompt tokens the server reused from its prefix cache ÷ prompt tokens, over the requests whose usage said."""
    told = [(r.cached_tokens, r.prompt_tokens) for r in records if r.cached_tokens is not None and r.prompt_tokens]
    return sum(cached for cached, _ in told) / sum(prompt for _, prompt in told) if told else None


def length_stats(values: Iterable[int | None]) -> dict[str, float | None]:
    known = [value for value in values if value is not None]
    if not known:
        return {"min": None, "mean": None, "p50": None, "max": None}
    return {"min": min(known), "mean": sum(known) / len(known), "p50": percentile(known, 50), "max": max(known)}


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
                  attainment: float, windows: dict[tuple[str, float], StepWindow] | None = None) -> dict:
    """Everything results.json holds: `meta` (run id, status, config, versions, machine, server) plus figures."""
    summaries = summarize(records, costs, slo, windows)
    per_label = cheapest_meeting_slo(summaries, attainment)
    overall = cheapest_overall(per_label)
    return {
        **meta,
        "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms, "attainment": attainment},
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
