"""`quantserve loadtest compare RUN…`: several runs' figures side by side, as one Markdown table. Each row names its
run's prompt set, so runs of the same variants on `short` and on `extraction` show what constraints cost."""

from __future__ import annotations

import json
from pathlib import Path

from loadtest.results import summaries_from
from loadtest.tables import fmt, level_text, prompts_text
from loadtest.target import LoadtestError

HEADER = ("run", "prompts", "variant", "level", "req", "err", "offered/achieved req/s", "out tok/s", "TTFT p90 ms",
          "ITL p90 ms", "TPOT p90 ms", "E2E p90 ms", "$/1M out", "goodput req/s", "SLO met")


def resolve_run(run: str, reports_dir: Path) -> Path:
    """A run folder, or a run id under `reports_dir`; either must hold results.json."""
    for folder in (Path(run), reports_dir / run):
        if (folder / "results.json").is_file():
            return folder
    raise LoadtestError(f"no results.json for run {run!r} (looked in {run} and {reports_dir / run})")


def load_results(folder: Path) -> dict:
    try:
        return json.loads((folder / "results.json").read_text())
    except (OSError, ValueError) as exc:
        raise LoadtestError(f"cannot read {folder / 'results.json'}: {exc}") from None


def compare_runs(folders: list[Path]) -> str:
    runs = [load_results(folder) for folder in folders]
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for results in runs:
        lines += ["| " + " | ".join(row) + " |" for row in _rows(results)]
    lines += ["", "| run | status | model | prompts | max_tokens | SLO | cheapest meeting SLO | machine |"]
    lines += ["|" + "---|" * 8]
    lines += [_run_line(results) for results in runs]
    return "\n".join(lines)


def _rows(results: dict) -> list[list[str]]:
    rows, prompts = [], prompts_text(results["config"])
    for s in summaries_from(results):
        rates = f"{fmt(s.offered_rps, 2)} / {fmt(s.achieved_rps, 2)}"
        rows.append([results["run_id"], prompts, s.label, level_text(s), str(s.requests), str(s.errors), rates,
                     fmt(s.output_tokens_per_s), fmt(s.ttft_ms["p90"], 0), fmt(s.itl_ms["p90"]),
                     fmt(s.tpot_ms["p90"]), fmt(s.e2e_ms["p90"], 0), fmt(s.usd_per_m_output_tokens, 3),
                     fmt(s.goodput_rps, 2), f"{s.slo_attainment:.0%}"])
    return rows


def _run_line(results: dict) -> str:
    config, slo = results["config"], results["slo"]
    cheapest = results["cheapest_meeting_slo"]
    best = f"{cheapest['overall']} @ {cheapest['overall_level']:g}" if cheapest["overall"] else "none"
    bounds = f"TTFT {fmt(slo['ttft_ms'], 0)} ms, TPOT {fmt(slo.get('tpot_ms'))} ms, {slo['attainment']:.0%}"
    machine = f"{results['machine'].get('cpu')} ×{results['machine'].get('logical_cpus')}"
    cells = [results["run_id"], results["status"], config["model"], prompts_text(config), config["max_tokens"], bounds,
             best, machine]
    return "| " + " | ".join(str(cell) for cell in cells) + " |"
