"""`quantserve plan`'s output: the table it prints, plan.md, plan.html and the Pareto plot of monthly cost against
p90 latency. Rendering only: every figure comes from `loadtest.planner`."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from loadtest import plots
from loadtest.cost import pareto_front
from loadtest.planner import Option, Target, Verdict, describe_target
from loadtest.report import PAGE_STYLE, html_table
from loadtest.tables import fmt, md_table

COLUMNS = ("variant", "profile", "perplexity Δ", "greedy agr.", "req/s per replica", "replicas", "$/month",
           "$/1M out", "$/1M total", "TTFT p90 ms", "ITL p90 ms", "E2E p90 ms", "verdict")
PLOT = "plan_pareto.png"


def rows(verdicts: list[Verdict], recommended: Option | None) -> list[list[str]]:
    return [_row(verdict, recommended) for verdict in sorted(verdicts, key=_order)]


def _order(verdict: Verdict) -> tuple:
    best = verdict.best
    return (best is None, best.monthly_usd if best else 0, verdict.label, verdict.hardware_profile)


def _row(verdict: Verdict, recommended: Option | None) -> list[str]:
    quality = verdict.quality
    increase = quality.get("ppl_increase_pct")
    cells = [verdict.label, verdict.hardware_profile, "–" if increase is None else f"{increase:+.1f} %",
             fmt(quality.get("greedy_agreement"), 2)]
    best = verdict.best
    if best is None:
        return cells + ["–"] * 8 + [f"fails: {verdict.reasons[0]}"]
    p = best.point
    mark = "**recommended**" if best is recommended else "meets"
    return cells + [fmt(p.per_replica_rps, 2), str(best.replicas), fmt(best.monthly_usd, 2),
                    fmt(best.usd_per_m_output, 3), fmt(best.usd_per_m_total, 3), fmt(p.ttft_p90_ms, 0),
                    fmt(p.itl_p90_ms), fmt(p.e2e_p90_ms, 0), mark]


def basis_lines(verdicts: list[Verdict]) -> list[str]:
    """Which measured point each variant's figures rest on, and what the plan assumes beyond it."""
    lines = []
    for verdict in sorted(verdicts, key=_order):
        head = f"{verdict.label} on {verdict.hardware_profile}"
        best = verdict.best
        if best is None:
            lines.append(f"- {head}: not usable — {'; '.join(verdict.reasons)}")
            continue
        lines.append(f"- {head}: rests on {best.point.rests_on()}; {'; '.join(best.notes)}; "
                     f"quality from {verdict.quality.get('source', 'unknown')}")
    return lines


def headline(target: Target, recommended: Option | None) -> str:
    wanted = f"Target: {describe_target(target)}; headroom {target.headroom:.0%} (capacity for " \
             f"{target.capacity_rps:g} req/s), {target.hours_per_month:g} hours a month."
    if recommended is None:
        return wanted + " No variant meets it."
    p = recommended.point
    return (f"{wanted} Recommended: **{p.label} on {p.hardware_profile}, {recommended.replicas} replica(s), "
            f"${recommended.monthly_usd:,.2f} a month** (${fmt(recommended.usd_per_m_output, 3)} per 1M output "
            f"tokens).")


def table_text(verdicts: list[Verdict], recommended: Option | None) -> str:
    """The plan as a fixed-width table for the terminal."""
    table = [list(COLUMNS)] + [[cell.replace("**", "") for cell in row] for row in rows(verdicts, recommended)]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS) - 1)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
                     for row in table)


def write_plan_report(folder: Path, target: Target, verdicts: list[Verdict], recommended: Option | None,
                      inputs: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    png = pareto_plot(verdicts, recommended)
    (folder / PLOT).write_bytes(png)
    lines = [f"# Capacity plan for {inputs['model']}", "", headline(target, recommended), ""]
    lines += md_table(COLUMNS, rows(verdicts, recommended))
    lines += ["", "## What each figure rests on", "", *basis_lines(verdicts), "",
              f"![cost against p90 latency]({PLOT})", "", "## Inputs", "", "```json",
              json.dumps(inputs, indent=2, default=str), "```", ""]
    (folder / "plan.md").write_text("\n".join(lines))
    (folder / "plan.html").write_text(_html(target, verdicts, recommended, inputs, png))
    return folder / "plan.md"


def _html(target: Target, verdicts: list[Verdict], recommended: Option | None, inputs: dict, png: bytes) -> str:
    e = html.escape
    basis = "".join(f"<li>{e(line[2:])}</li>" for line in basis_lines(verdicts))
    image = f'<img alt="cost against p90 latency" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    title = e(f"Capacity plan for {inputs['model']}")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>\n'
            + PAGE_STYLE.replace("{{", "{").replace("}}", "}")
            + f"</head><body>\n<h1>{title}</h1><p>{e(headline(target, recommended)).replace('**', '')}</p>"
            + html_table(COLUMNS, [[c.replace("**", "") for c in r] for r in rows(verdicts, recommended)])
            + f"<h2>What each figure rests on</h2><ul>{basis}</ul>{image}"
            + f"<h2>Inputs</h2><pre>{e(json.dumps(inputs, indent=2, default=str))}</pre>\n</body></html>\n")


def pareto_plot(verdicts: list[Verdict], recommended: Option | None) -> bytes:
    """Monthly cost against p90 TTFT and p90 ITL for every option (a variant run at one measured point)."""
    figure, axes = plots.plt.subplots(1, 2, figsize=(12, 4.5))
    options = [option for verdict in verdicts for option in verdict.options]
    for axis, (metric, title) in zip(axes, (("ttft_p90_ms", "p90 TTFT (ms)"), ("itl_p90_ms", "p90 ITL (ms)")),
                                     strict=True):
        for verdict in verdicts:
            if verdict.options:
                axis.scatter([o.monthly_usd for o in verdict.options],
                             [getattr(o.point, metric) for o in verdict.options],
                             label=f"{verdict.label} ({verdict.hardware_profile})")
            for option in verdict.options:
                axis.annotate(f"{option.replicas}× @ {option.point.per_replica_rps:.2g}/s",
                              (option.monthly_usd, getattr(option.point, metric)), fontsize=7, alpha=0.7)
        _front(axis, options, metric)
        if recommended is not None:
            axis.scatter([recommended.monthly_usd], [getattr(recommended.point, metric)], marker="*", s=300,
                         facecolors="none", edgecolors="red", label="recommended")
        plots.finish_axes(axis, "$ per month (replicas × price)", title, f"Cost against {title}")
    return plots.to_png(figure)


def _front(axis, options: list[Option], metric: str) -> None:
    points = [(o.monthly_usd, getattr(o.point, metric)) for o in options if getattr(o.point, metric) is not None]
    front = sorted(points[index] for index in pareto_front(points))
    if front:
        axis.plot([x for x, _ in front], [y for _, y in front], "k:", linewidth=1, label="Pareto front")
