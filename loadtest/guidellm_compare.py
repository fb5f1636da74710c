"""One quantserve load-test step and one guidellm run against the same server and workload, figures side by side.

    loadtest/compare_guidellm.sh          # makes guidellm's own environment, then runs this module

Both send the same open-loop schedule (constant arrivals at `--rate`) of synthetic chat prompts of `--input-tokens`
tokens made with the model's tokenizer, ask for exactly `--output-tokens` tokens (ignore_eos) and stream. quantserve
runs once before and once after guidellm, so the table also shows how much two runs of the same tool differ on this
machine. guidellm runs from its own environment (`--guidellm`, a path to its executable); nothing of it is imported.

guidellm always asks for `stream_options.continuous_usage_stats`, a vLLM extension quantserve refuses (400, as it
refuses every argument it does not honour); the backend's `extras` set it to null, which guidellm then leaves out of
the body, so `include_usage` stays and guidellm counts output tokens from the server's usage, as quantserve does.

Without `--target` the application is started on 127.0.0.1 serving only the measured variant (the config's other
variants disabled, other models left out), so no other replica or engine competes for the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from loadtest.cost import distribution
from loadtest.machine import cpu_flags
from loadtest.records import read_records
from loadtest.tables import fmt, md_table
from quantserve.constants import DEFAULT_CONFIG_PATH
from serving.launcher import running_app

# (row, quantserve figure and statistic, guidellm metric and statistic). guidellm times TTFT and E2E from when it
# sent a request (its dispatch delay is a metric apart) and its ITL is a request's mean gap after the first token:
# quantserve's TPOT. quantserve's own TTFT counts from when the request was due and its ITL pools every gap.
ROWS = (
    ("TTFT from send, p50 ms", ("ttft_from_send", "p50"), ("time_to_first_token_ms", "median")),
    ("TTFT from send, p90 ms", ("ttft_from_send", "p90"), ("time_to_first_token_ms", "p90")),
    ("TTFT from send, mean ms", ("ttft_from_send", "mean"), ("time_to_first_token_ms", "mean")),
    ("TTFT from schedule (quantserve's), p90 ms", ("ttft_ms", "p90"), ("time_to_first_token_ms", "p90")),
    ("TPOT = guidellm's ITL, p50 ms", ("tpot_ms", "p50"), ("inter_token_latency_ms", "median")),
    ("TPOT = guidellm's ITL, p90 ms", ("tpot_ms", "p90"), ("inter_token_latency_ms", "p90")),
    ("TPOT = guidellm's ITL, mean ms", ("tpot_ms", "mean"), ("inter_token_latency_ms", "mean")),
    ("ITL every gap (quantserve's), p50 ms", ("itl_ms", "p50"), ("inter_token_latency_ms", "median")),
    ("ITL every gap (quantserve's), p90 ms", ("itl_ms", "p90"), ("inter_token_latency_ms", "p90")),
    ("E2E from send, p50 ms", ("e2e_from_send", "p50"), ("request_latency", "median")),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--guidellm", required=True, help="the guidellm executable (in its own environment)")
    parser.add_argument("--target", help="a running server (default: start the application on 127.0.0.1)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG_PATH))
    parser.add_argument("--model", default="smollm2-135m:onnx-int4")
    parser.add_argument("--tokenizer-dir", default="models/smollm2-135m/base", help="folder with tokenizer.json")
    parser.add_argument("--rate", type=float, default=1.0, help="constant arrivals per second (default: 1)")
    parser.add_argument("--input-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds left out at the start of each run")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds of each run")
    parser.add_argument("--output-dir", default="reports/guidellm-compare")
    return parser.parse_args(argv)


def quantserve_step(args: argparse.Namespace, target: str, folder: Path, run_id: str) -> dict:
    command = [sys.executable, "-m", "quantserve.cli", "loadtest", "run", "--target", target, "--model", args.model,
               "--rate", f"{args.rate:g}", "--arrivals", "constant", "--input-tokens", str(args.input_tokens),
               "--tokenizer", str(Path(args.tokenizer_dir) / "tokenizer.json"), "--max-tokens", str(args.output_tokens),
               "--warmup", f"{args.warmup:g}s", "--duration", f"{args.duration:g}s", "--config", args.config,
               "--reports-dir", str(folder), "--run-id", run_id]
    subprocess.run(command, check=True)
    (summary,) = json.loads((folder / run_id / "results.json").read_text())["summaries"]
    records = [r for r in read_records(folder / run_id / "requests.csv") if r.phase == "measure" and r.ok]
    summary["ttft_from_send"] = distribution(r.ttft_ms - r.lag_ms for r in records)
    summary["e2e_from_send"] = distribution(r.e2e_ms - r.lag_ms for r in records)
    return summary


def guidellm_command(args: argparse.Namespace, target: str, output: Path) -> list[str]:
    """guidellm 0.8's `run`: the same model, rate, warm-up, duration, prompt and output lengths as quantserve's step."""
    backend = {"kind": "openai_http", "target": target, "model": args.model,  # no continuous_usage_stats: see above
               "extras": {"body": {"stream_options": {"continuous_usage_stats": None}}}}
    return [args.guidellm, "run", "--backend", json.dumps(backend),
            "--profile", f"kind=constant,rate={args.rate:g},warmup={args.warmup:g}",
            "--constraint", f"kind=max_duration,seconds={args.warmup + args.duration:g}",
            "--data", f"kind=synthetic_text,prompt_tokens={args.input_tokens},output_tokens={args.output_tokens}",
            "--tokenizer", f"kind=huggingface_auto,model={Path(args.tokenizer_dir).resolve()}",
            "--output", f"kind=json,path={output}", "--disable-console-interactive"]


def guidellm_run(args: argparse.Namespace, target: str, folder: Path) -> dict:
    output = (folder / "guidellm.json").resolve()  # guidellm runs in the temporary folder
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run(guidellm_command(args, target, output), check=True, env=env, cwd=tempfile.gettempdir())
    return read_guidellm(output)


def read_guidellm(path: Path) -> dict:
    """The one benchmark of a guidellm (0.8) JSON report: {"benchmarks": [{"metrics": {NAME: {"successful": ...}}}]}."""
    benchmarks = json.loads(Path(path).read_text()).get("benchmarks") or []
    if len(benchmarks) != 1 or "metrics" not in benchmarks[0]:
        raise ValueError(f"{path}: expected one benchmark with metrics, found {len(benchmarks)} benchmarks")
    return benchmarks[0]


def guidellm_value(benchmark: dict, metric: str, statistic: str) -> float | None:
    """A statistic of guidellm's successful requests: mean or median (fields), p50/p90/p99 (percentiles); ms."""
    stats = benchmark["metrics"][metric]["successful"]
    value = stats["percentiles"].get(statistic) if statistic.startswith("p") else stats.get(statistic)
    return value * 1000 if metric == "request_latency" and value is not None else value  # seconds there


def comparison_rows(before: dict, benchmark: dict, after: dict) -> list[list[str]]:
    rows = []
    for name, (ours, ours_stat), (theirs, theirs_stat) in ROWS:
        first, second = before[ours][ours_stat], after[ours][ours_stat]
        other = guidellm_value(benchmark, theirs, theirs_stat)
        rows.append([name, fmt(first), fmt(other), fmt(second), _diff(first, other), _diff(second, other),
                     _diff(second, first)])
    return rows


def _diff(value: float | None, reference: float | None) -> str:
    return f"{(value / reference - 1) * 100:+.1f} %" if value is not None and reference else "–"


def facts(runs: dict[str, dict], benchmark: dict) -> list[str]:
    lines = [f"- quantserve {name}: {s['requests']} measured requests, offered {fmt(s['offered_rps'], 2)} / achieved "
             f"{fmt(s['achieved_rps'], 2)} req/s, prompt {fmt(s['prompt_len']['mean'])} / output "
             f"{fmt(s['output_len']['mean'])} tokens per request (usage), {s['itl_gaps']} gaps"
             for name, s in runs.items()]
    metrics = benchmark["metrics"]
    totals = metrics["request_totals"]
    tokens = {name: metrics[name]["successful"]["mean"] for name in ("prompt_token_count", "output_token_count")}
    return lines + [f"- guidellm: {totals.get('successful')} successful requests ({totals.get('errored')} errored, "
                    f"{totals.get('incomplete')} cut off at the end), prompt {fmt(tokens['prompt_token_count'])} / "
                    f"output {fmt(tokens['output_token_count'])} tokens per request (usage), "
                    f"{fmt(metrics['requests_per_second']['successful']['mean'], 2)} req/s"]


def machine_line(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> str:
    flags = cpu_flags() or []
    avx = ", ".join(f for f in flags if f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16")) or "no AVX2"
    avx += "" if "avx512f" in flags else ", no AVX-512"
    return (f"- machine: {os.cpu_count()} logical CPUs, {avx} (/proc/cpuinfo); load average (1, 5, 15 min) "
            f"{', '.join(f'{v:.2f}' for v in load_before)} before, {', '.join(f'{v:.2f}' for v in load_after)} after")


def serve_config(config_path: Path, model: str, folder: Path) -> Path:
    """A copy of the config serving only `model` (MODEL:VARIANT, or MODEL for its default variant)."""
    config = yaml.safe_load(config_path.read_text())
    name, _, variant = model.partition(":")
    config["models"] = [m for m in config["models"] if m["name"] == name]
    if not config["models"]:
        raise SystemExit(f"{config_path} has no model {name!r}")
    (entry,) = config["models"]
    variant = variant or entry.get("default_variant", "")
    if variant not in {v["name"] for v in entry["variants"]}:
        raise SystemExit(f"{config_path}: {name} has no variant {variant!r}")
    for item in entry["variants"]:
        item.setdefault("serve", {})["enabled"] = item["name"] == variant
    path = folder / "serve-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def measure(args: argparse.Namespace, target: str, folder: Path) -> tuple[dict, dict, dict]:
    before = quantserve_step(args, target, folder, "quantserve-before")
    benchmark = guidellm_run(args, target, folder)
    return before, benchmark, quantserve_step(args, target, folder, "quantserve-after")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder = Path(args.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    if args.target:
        before, benchmark, after = measure(args, args.target, folder)
    else:
        with running_app(serve_config(Path(args.config), args.model, folder), folder / "serve.log") as app:
            before, benchmark, after = measure(args, app.url, folder)
    load_after = os.getloadavg()
    lines = [f"{args.model}, constant {args.rate:g} req/s, {args.input_tokens} prompt tokens (before the chat "
             f"template), {args.output_tokens} output tokens, {args.warmup:g} s warm-up + {args.duration:g} s; "
             "quantserve ran before and after guidellm:", ""]
    lines += md_table(("metric", "quantserve before", "guidellm", "quantserve after", "before vs guidellm",
                       "after vs guidellm", "after vs before"), comparison_rows(before, benchmark, after))
    text = "\n".join(lines + ["", *facts({"before": before, "after": after}, benchmark),
                               machine_line(load_before, load_after)]) + "\n"
    (folder / "comparison.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
