"""Write a run's report folder from its results and records: results.json, requests.csv, report.md, report.html.

Rendering only: every figure comes from `results.build_results`; nothing here measures or recomputes.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from loadtest import plots
from loadtest.records import RequestRecord, write_records
from loadtest.results import LevelSummary, summaries_from

FILES = ("results.json", "requests.csv", "report.md", "report.html")
COLUMNS = ("variant", "level", "req", "err", "req/s", "out tok/s", "TTFT p50/p90 ms", "ITL p50/p90 ms",
           "E2E p90 ms", "$/h", "$/1M out", "$/1M total", "goodput req/s", "SLO met", "Pareto")


def write_report(folder: Path, results: dict, records: list[RequestRecord]) -> Path:
    """Write all report files into `folder` (created); return the HTML report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    write_records(folder / "requests.csv", records)
    figures = _figures(results, records)
    for name, png in figures.items():
        (folder / f"{name}.png").write_bytes(png)
    (folder / "report.md").write_text(render_markdown(results, list(figures)))
    (folder / "report.html").write_text(render_html(results, figures))
    return folder / "report.html"


def _figures(results: dict, records: list[RequestRecord]) -> dict[str, bytes]:
    summaries = summaries_from(results)
    if not summaries:
        return {}
    return {
        "latency_vs_throughput": plots.latency_vs_throughput(summaries),
        "latency_vs_cost": plots.latency_vs_cost(summaries),
        "ttft_distribution": plots.ttft_distribution(records),
    }


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "–"
    if digits == 0 or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def summary_row(s: LevelSummary) -> list[str]:
    level = f"{s.level:g} users" if s.mode == "users" else f"{s.level:g} req/s"
    return [s.label, level, str(s.requests), str(s.errors), fmt(s.requests_per_s, 2), fmt(s.output_tokens_per_s),
            f"{fmt(s.ttft_ms['p50'], 0)} / {fmt(s.ttft_ms['p90'], 0)}",
            f"{fmt(s.itl_ms['p50'])} / {fmt(s.itl_ms['p90'])}",
            fmt(s.e2e_ms["p90"], 0), fmt(s.usd_per_hour, 4), fmt(s.usd_per_m_output_tokens, 3),
            fmt(s.usd_per_m_total_tokens, 3), fmt(s.goodput_rps, 2), f"{s.slo_attainment:.0%}", "◆" if s.pareto else ""]


def cheapest_rows(results: dict) -> list[list[str]]:
    slo = results["cheapest_meeting_slo"]
    rows = []
    for label, best in slo["per_variant"].items():
        if best is None:
            rows.append([label, "no level met the SLO", "–", "–", ""])
            continue
        s = LevelSummary(**best)
        mark = "cheapest" if label == slo["overall"] else ""
        rows.append([label, summary_row(s)[1], fmt(s.usd_per_m_output_tokens, 3), f"{s.slo_attainment:.0%}", mark])
    return rows


def slo_text(results: dict) -> str:
    slo = results["slo"]
    bounds = [f"TTFT ≤ {slo['ttft_ms']:g} ms" if slo["ttft_ms"] else "",
              f"ITL ≤ {slo['itl_ms']:g} ms" if slo["itl_ms"] else ""]
    text = " and ".join(bound for bound in bounds if bound) or "no latency bound"
    return f"{text}, met by at least {slo['attainment']:.0%} of requests, with no errors"


def _md_table(header: list[str] | tuple[str, ...], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def render_markdown(results: dict, figure_names: list[str]) -> str:
    lines = [f"# Load test {results['run_id']}", "", *_overview(results), "", "## Per variant and load level", ""]
    lines += _md_table(COLUMNS, [summary_row(s) for s in summaries_from(results)])
    lines += ["", f"## Cheapest variant meeting the SLO ({slo_text(results)})", ""]
    lines += _md_table(["variant", "level", "$/1M out", "SLO met", ""], cheapest_rows(results))
    lines += ["", "## Errors", ""]
    lines += _md_table(["count", "error"], _error_rows(results)) if results["errors"] else ["None."]
    lines += ["", "## Plots", ""] + [f"![{name}]({name}.png)" for name in figure_names]
    lines += ["", "## Run", "", "```json", json.dumps(_run_facts(results), indent=2, default=str), "```", ""]
    return "\n".join(lines)


def _overview(results: dict) -> list[str]:
    t = results["totals"]
    config = results["config"]
    status = results["status"] + (f" — {results['error']}" if results.get("error") else "")
    levels = ", ".join(f"{level:g}" for level in config["levels"])
    return [
        f"- status: **{status}**",
        f"- target {config['target']}, model {config['model']}, {config['mode']} levels {levels}, "
        f"warm-up {config['warmup_s']:g} s + {config['step_s']:g} s per step, prompts `{config['prompts']}`, "
        f"max_tokens `{config['max_tokens']}`",
        f"- requests: {t['requests']} ({t['warmup_requests']} warm-up, excluded), errors: {t['errors']}; "
        f"measured tokens: {t['prompt_tokens']} prompt, {t['output_tokens']} output, {t['total_tokens']} total",
        f"- SLO: {slo_text(results)}",
    ]


def _error_rows(results: dict) -> list[list[str]]:
    return [[str(count), message] for message, count in results["errors"].items()]


def _run_facts(results: dict) -> dict:
    return {key: results.get(key) for key in ("config", "variants", "versions", "machine", "server")}


def render_html(results: dict, figures: dict[str, bytes]) -> str:
    e = html.escape
    images = "".join(f'<figure><img alt="{e(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                     f"<figcaption>{e(name.replace('_', ' '))}</figcaption></figure>" for name, png in figures.items())
    cheapest = _html_table(["variant", "level", "$/1M out", "SLO met", ""], cheapest_rows(results))
    errors = _html_table(["count", "error"], _error_rows(results)) if results["errors"] else "<p>None.</p>"
    return _PAGE.format(
        title=e(f"Load test {results['run_id']}"),
        overview="".join(f"<li>{e(line[2:]).replace('**', '')}</li>" for line in _overview(results)),
        table=_html_table(COLUMNS, [summary_row(s) for s in summaries_from(results)]),
        slo=e(slo_text(results)), cheapest=cheapest, errors=errors, images=images,
        facts=e(json.dumps(_run_facts(results), indent=2, default=str)),
    )


def _html_table(header, rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f0f3f7; }} td:first-child, th:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 100%; border: 1px solid #eee; }}
pre {{ background: #f7f7f7; padding: 1em; font-size: 0.8em; overflow: auto; }}
</style></head><body>
<h1>{title}</h1><ul>{overview}</ul>
<h2>Per variant and load level</h2>{table}
<h2>Cheapest variant meeting the SLO</h2><p>{slo}</p>{cheapest}
<h2>Errors</h2>{errors}
<h2>Plots</h2>{images}
<h2>Run</h2><pre>{facts}</pre>
</body></html>
"""
