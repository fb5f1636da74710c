"""The report's tables as rows of text, from a run's results: formatting only, nothing measured or recomputed here.

Markdown (`report.md`), HTML (`report.html`), the summary CSV and `loadtest compare` all take their rows from here.
"""

from __future__ import annotations

from loadtest.levels import LATENCIES, LevelSummary

LOAD_COLUMNS = ("variant", "level", "req", "err", "offered req/s", "achieved req/s", "lag p50/p99 ms", "cap hits",
                "out tok/s", "$/h", "$/1M out", "$/1M total", "goodput req/s", "SLO met", "Pareto")
LATENCY_COLUMNS = ("variant", "level", "TTFT ms", "ITL ms", "TPOT ms", "E2E ms", "ITL gaps")
WORKLOAD_COLUMNS = ("variant", "level", "prompt tokens min/mean/max", "prompt reused (prefix cache)",
                    "output tokens min/mean/max", "short of max_tokens")
CHEAPEST_COLUMNS = ("variant", "level", "$/1M out", "SLO met", "")
STATS = ("p50", "p90", "p99", "mean")


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if digits == 0 or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def prompts_text(config: dict) -> str:
    """A run's prompts in a cell: the set's name (or the synthetic lengths), and how many ask for constrained output
    (results.json's `constrained_prompts` of `prompt_count`; runs recorded before those fields show the name)."""
    name = config.get("input_tokens") or config["prompts"]
    constrained = config.get("constrained_prompts")
    return f"{name} ({constrained}/{config.get('prompt_count')} constrained)" if constrained else str(name)


def level_text(s: LevelSummary) -> str:
    if s.mode == "users":
        return f"{s.level:g} users"
    return f"{s.level:g} req/s" + (" constant" if s.arrivals == "constant" else "")


def load_row(s: LevelSummary) -> list[str]:
    offered = fmt(s.offered_rps, 2) if s.offered_rps is not None else "closed loop"
    lag = f"{fmt(s.schedule_lag_ms.get('p50'), 0)} / {fmt(s.schedule_lag_ms.get('p99'), 0)}"
    caps = f"{s.cap_hits} (cap {s.rate_users})" if s.cap_hits else ("0" if s.mode == "rate" else "–")
    return [s.label, level_text(s), str(s.requests), str(s.errors), offered, fmt(s.achieved_rps, 2), lag, caps,
            fmt(s.output_tokens_per_s), fmt(s.usd_per_hour, 4), fmt(s.usd_per_m_output_tokens, 3),
            fmt(s.usd_per_m_total_tokens, 3), fmt(s.goodput_rps, 2), f"{s.slo_attainment:.0%}",
            "◆" if s.pareto else ""]


def latency_cell(stats: dict[str, float | None]) -> str:
    digits = 0 if (stats.get("p50") or 0) >= 100 else 1
    return " / ".join(fmt(stats.get(name), digits) for name in STATS)


def latency_row(s: LevelSummary) -> list[str]:
    return [s.label, level_text(s), *(latency_cell(getattr(s, name)) for name in LATENCIES), str(s.itl_gaps)]


def workload_row(s: LevelSummary) -> list[str]:
    def lengths(stats: dict) -> str:
        return f"{fmt(stats.get('min'), 0)} / {fmt(stats.get('mean'))} / {fmt(stats.get('max'), 0)}"

    reused = "–" if s.prompt_reused is None else f"{s.prompt_reused:.0%}"
    return [s.label, level_text(s), lengths(s.prompt_len), reused, lengths(s.output_len), str(s.short_outputs)]


def cheapest_rows(results: dict) -> list[list[str]]:
    slo = results["cheapest_meeting_slo"]
    rows = []
    for label, best in slo["per_variant"].items():
        if best is None:
            rows.append([label, "no level met the SLO", "–", "–", ""])
            continue
        s = LevelSummary(**best)
        mark = "cheapest" if label == slo["overall"] else ""
        rows.append([label, level_text(s), fmt(s.usd_per_m_output_tokens, 3), f"{s.slo_attainment:.0%}", mark])
    return rows


def slo_text(results: dict) -> str:
    slo = results["slo"]
    bounds = [f"TTFT ≤ {slo['ttft_ms']:g} ms" if slo.get("ttft_ms") else "",
              f"TPOT ≤ {slo['tpot_ms']:g} ms" if slo.get("tpot_ms") else ""]
    text = " and ".join(bound for bound in bounds if bound) or "no latency bound"
    return f"{text} per request, met by at least {slo['attainment']:.0%} of requests, with no errors"


def csv_row(s: LevelSummary) -> dict[str, object]:
    """One row of summary.csv: every figure of the step, latency statistics flattened (`ttft_ms_p90`, …)."""
    row: dict[str, object] = {
        "variant": s.label, "mode": s.mode, "level": s.level, "arrivals": s.arrivals, "requests": s.requests,
        "errors": s.errors, "offered_rps": s.offered_rps, "achieved_rps": s.achieved_rps,
        "lag_ms_p50": s.schedule_lag_ms.get("p50"), "lag_ms_p99": s.schedule_lag_ms.get("p99"),
        "cap_hits": s.cap_hits, "rate_users": s.rate_users,
    }
    for name in LATENCIES:
        row.update({f"{name}_{stat}": getattr(s, name).get(stat) for stat in STATS})
    row.update(itl_gaps=s.itl_gaps, prompt_tokens_mean=s.prompt_len.get("mean"), prompt_reused=s.prompt_reused,
               output_tokens_mean=s.output_len.get("mean"), short_outputs=s.short_outputs,
               output_tokens_per_s=s.output_tokens_per_s, usd_per_hour=s.usd_per_hour,
               usd_per_m_output_tokens=s.usd_per_m_output_tokens, usd_per_m_total_tokens=s.usd_per_m_total_tokens,
               goodput_rps=s.goodput_rps, slo_attainment=s.slo_attainment, pareto=s.pareto)
    return row


def md_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
