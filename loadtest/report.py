"""Write a run's report folder from its results and records: results.json, summary.csv, requests.csv, report.md,
report.html.

Rendering only: every figure comes from `results.build_results`; nothing here measures or recomputes.
"""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path

from loadtest import plots
from loadtest.records import RequestRecord, write_records
from loadtest.results import summaries_from
from loadtest.tables import (
    CHEAPEST_COLUMNS,
    LATENCY_COLUMNS,
    LOAD_COLUMNS,
    WORKLOAD_COLUMNS,
    cheapest_rows,
    csv_row,
    latency_row,
    load_row,
    md_table,
    slo_text,
    workload_row,
)

FILES = ("results.json", "summary.csv", "requests.csv", "report.md", "report.html")
LOAD_NOTE = ("Offered: arrivals due in the measured window per second (rate mode; a closed loop offers what it "
             "achieves). Achieved: successful requests that finished inside it, per second. Lag: sent minus due; "
             "cap hits: requests that came due while every client user was busy (the client's own limit).")
LATENCY_NOTE = ("p50 / p90 / p99 / mean. TTFT and E2E count from when a request was due (rate mode: its scheduled "
                "arrival, so waiting for a free client is included). ITL: every gap between streamed tokens of the "
                "step; TPOT: one value per request, its mean gap after the first token.")
WORKLOAD_NOTE = ("Tokens per successful request as the server counted them (usage), not as asked; *prompt reused* is "
                 "the share of prompt tokens the server took from its prefix cache (`usage.prompt_tokens_details."
                 "cached_tokens`) instead of computing them.")


def write_report(folder: Path, results: dict, records: list[RequestRecord]) -> Path:
    """Write all report files into `folder` (created); return the HTML report's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    write_summary_csv(folder / "summary.csv", results)
    write_records(folder / "requests.csv", records)
    figures = _figures(results, records)
    for name, png in figures.items():
        (folder / f"{name}.png").write_bytes(png)
    (folder / "report.md").write_text(render_markdown(results, list(figures)))
    (folder / "report.html").write_text(render_html(results, figures))
    return folder / "report.html"


def write_summary_csv(path: Path, results: dict) -> None:
    rows = [csv_row(summary) for summary in summaries_from(results)]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["variant"])
        writer.writeheader()
        writer.writerows({key: "" if value is None else value for key, value in row.items()} for row in rows)


def _figures(results: dict, records: list[RequestRecord]) -> dict[str, bytes]:
    summaries = summaries_from(results)
    if not summaries:
        return {}
    figures = {
        "latency_vs_throughput": plots.latency_vs_throughput(summaries),
        "latency_vs_cost": plots.latency_vs_cost(summaries),
        "ttft_distribution": plots.ttft_distribution(records),
    }
    if any(s.offered_rps is not None for s in summaries):
        figures["offered_vs_achieved"] = plots.offered_vs_achieved(summaries)
    return figures


def sections(results: dict) -> list[tuple[str, str, tuple[str, ...], list[list[str]]]]:
    """(title, note, header, rows) of every table, in report order."""
    summaries = summaries_from(results)
    errors = [[str(count), message] for message, count in results["errors"].items()]
    return [
        ("Load, throughput and cost", LOAD_NOTE, LOAD_COLUMNS, [load_row(s) for s in summaries]),
        ("Latency", LATENCY_NOTE, LATENCY_COLUMNS, [latency_row(s) for s in summaries]),
        ("Workload measured", WORKLOAD_NOTE, WORKLOAD_COLUMNS, [workload_row(s) for s in summaries]),
        (f"Cheapest variant meeting the SLO ({slo_text(results)})", "", CHEAPEST_COLUMNS, cheapest_rows(results)),
        ("Errors", "" if errors else "None.", ("count", "error"), errors),
    ]


def render_markdown(results: dict, figure_names: list[str]) -> str:
    lines = [f"# Load test {results['run_id']}", "", *_overview(results)]
    for title, note, header, rows in sections(results):
        lines += ["", f"## {title}", ""] + ([note, ""] if note else []) + (md_table(header, rows) if rows else [])
    lines += ["", "## Plots", ""] + [f"![{name}]({name}.png)" for name in figure_names]
    lines += ["", "## Run", "", "```json", json.dumps(_run_facts(results), indent=2, default=str), "```", ""]
    return "\n".join(lines)


def _overview(results: dict) -> list[str]:
    t, config = results["totals"], results["config"]
    status = results["status"] + (f" — {results['error']}" if results.get("error") else "")
    levels = ", ".join(f"{level:g}" for level in config["levels"])
    pacing = f"open-loop {config.get('arrivals')} arrivals" if config["mode"] == "rate" else "closed loop"
    prompts = (f"synthetic prompts of `{config['input_tokens']}` tokens" if config.get("input_tokens")
               else f"prompts `{config['prompts']}`")
    if config.get("constrained_prompts"):
        prompts += (f" ({config['constrained_prompts']} of {config.get('prompt_count')} with a JSON response_format: "
                    "constrained decoding)")
    temperature = config.get("temperature")
    sampling = f"temperature {temperature:g}" if temperature is not None else "the server's default temperature"
    exact = ", ignore_eos and min_tokens = max_tokens" if config.get("exact_output") else ""
    return [
        f"- status: **{status}**",
        f"- target {config['target']}, model {config['model']}, {config['mode']} levels {levels} ({pacing}), "
        f"warm-up {config['warmup_s']:g} s + {config['step_s']:g} s per step",
        f"- workload: {prompts}, max_tokens `{config['max_tokens']}`{exact}, {sampling}",
        f"- requests: {t['requests']} ({t['warmup_requests']} warm-up, excluded), errors: {t['errors']}; "
        f"measured tokens: {t['prompt_tokens']} prompt, {t['output_tokens']} output, {t['total_tokens']} total",
        f"- SLO: {slo_text(results)}",
        *_machine_line(results.get("machine") or {}),
    ]


def _machine_line(machine: dict) -> list[str]:
    """Where it ran and how busy that machine was: on loopback the server shares it with the load generator."""
    if not machine.get("cpu"):
        return []
    load = machine.get("load_average")
    busy = f", load average {' / '.join(f'{value:g}' for value in load)} (1/5/15 min) as the run began" if load else ""
    return [f"- machine: {machine['cpu']} × {machine.get('logical_cpus')}{busy}"]


def _run_facts(results: dict) -> dict:
    return {key: results.get(key) for key in ("config", "variants", "versions", "machine", "server")}


def render_html(results: dict, figures: dict[str, bytes]) -> str:
    e = html.escape
    images = "".join(f'<figure><img alt="{e(name)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
                     f"<figcaption>{e(name.replace('_', ' '))}</figcaption></figure>" for name, png in figures.items())
    body = "".join(f"<h2>{e(title)}</h2>" + (f"<p>{e(note)}</p>" if note else "")
                   + (html_table(header, rows) if rows else "") for title, note, header, rows in sections(results))
    return _PAGE.format(
        title=e(f"Load test {results['run_id']}"),
        overview="".join(f"<li>{e(line[2:]).replace('**', '').replace('`', '')}</li>" for line in _overview(results)),
        body=body, images=images, facts=e(json.dumps(_run_facts(results), indent=2, default=str)),
    )


def html_table(header, rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


PAGE_STYLE = """<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; background: #fff; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ background: #f0f3f7; }} td:first-child, th:first-child {{ text-align: left; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 100%; border: 1px solid #eee; }}
pre {{ background: #f7f7f7; padding: 1em; font-size: 0.8em; overflow: auto; }}
</style>"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
""" + PAGE_STYLE + """</head><body>
<h1>{title}</h1><ul>{overview}</ul>
{body}
<h2>Plots</h2>{images}
<h2>Run</h2><pre>{facts}</pre>
</body></html>
"""
