"""Which measured points are worth running: the Pareto front of cost against latency, and per variant its cheapest
load level that met the SLO."""

from __future__ import annotations

from loadtest.cost import pareto_front
from loadtest.levels import LevelSummary


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
