"""Quantization experiments outside the variant build (not run by `make variants` or the tests).

    python -m quantize.experiments run NAME --out DIR [method options]   # build, evaluate, time one candidate
    python -m quantize.experiments report --out DIR                      # Markdown table + frontier plot

Every candidate becomes an ONNX folder under DIR/NAME and one JSON line in DIR/results.jsonl: size against fp16,
perplexity change against the base with its paired 95 % interval, greedy agreement, build seconds and batch-1
decode tokens/s measured in the same run. Candidates are either a config build spec (`--spec` JSON, any method
`quantserve quantize build` knows) or an ONNX folder built elsewhere (`--onnx DIR`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from quantize.build import BUILD_CODE_VERSIONS, model_dir_for
from quantize.calibration import load_calibration_texts
from quantize.evaluate import build_reference, evaluate_onnx
from quantize.methods import run_method
from quantize.sensitivity import layer_sensitivity
from quantize.speed import decode_tokens_per_second
from quantserve.config import CalibrationSpec, VariantConfig, load_config
from quantserve.constants import DEFAULT_CONFIG_PATH
from quantserve.manifest import read_manifest


def run_candidate(args: argparse.Namespace) -> dict:
    config = load_config(args.config)
    model = config.model(args.model)
    model_dir = model_dir_for(config, model)
    manifest = read_manifest(model_dir)
    base_dir = model_dir / "base"
    out = Path(args.out) / args.name
    started = time.monotonic()
    if args.onnx:
        onnx_dir, spec = Path(args.onnx), {"onnx": args.onnx}
    else:
        variant = VariantConfig.model_validate({"name": args.name, "build": json.loads(args.spec)})
        fields = run_method(variant.build, base_dir, base_dir, out, Path(args.out) / ".cache", args.name)
        onnx_dir, spec = out / fields["serve_paths"]["onnx"], variant.build.model_dump()
    build_seconds = time.monotonic() - started
    reference, _ = build_reference(base_dir, Path(args.out) / "reference.json", manifest.source_sha256)
    quality = evaluate_onnx(onnx_dir, reference, args.name)
    size = sum(f.stat().st_size for f in onnx_dir.rglob("*") if f.is_file())
    record = {"name": args.name, "spec": spec, "bytes": size, "x_fp16": size / (manifest.parameters * 2),
              "build_seconds": None if args.onnx else round(build_seconds, 1),
              "decode_tokens_per_s": decode_tokens_per_second(onnx_dir, runs=args.speed_runs),
              "quality": quality.model_dump(exclude={"block_nll"}), "code": BUILD_CODE_VERSIONS}
    with (Path(args.out) / "results.jsonl").open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    return record


def speeds_in_turns(folders: list[Path], rounds: int) -> dict[str, float]:
    """Median tokens/s per folder over `rounds` turns (A, B, C, A, B, C, ...): on a shared machine, load that
    comes and goes then affects every folder alike instead of whichever happened to run during it."""
    measured: dict[str, list[float]] = {str(f): [] for f in folders}
    for _ in range(rounds):
        for folder in folders:
            measured[str(folder)].append(decode_tokens_per_second(folder, runs=1))
    return {name: statistics.median(values) for name, values in measured.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m quantize.experiments")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="build (or take), evaluate and time one candidate")
    run.add_argument("name")
    run.add_argument("--out", required=True, help="scratch folder for candidates and results.jsonl")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", help="a variant build spec as JSON, e.g. '{\"method\": \"onnx\", ...}'")
    source.add_argument("--onnx", help="an ONNX folder already built")
    run.add_argument("--config", default=str(DEFAULT_CONFIG_PATH))
    run.add_argument("--model", default="smollm2-135m")
    run.add_argument("--speed-runs", type=int, default=3)
    speed = commands.add_parser("speed", help="batch-1 decode tokens/s of ONNX folders, measured in turns")
    speed.add_argument("folders", nargs="+")
    speed.add_argument("--rounds", type=int, default=3)
    sensitivity = commands.add_parser("sensitivity", help="loss cost of quantizing each layer alone")
    sensitivity.add_argument("--out", required=True)
    sensitivity.add_argument("--config", default=str(DEFAULT_CONFIG_PATH))
    sensitivity.add_argument("--model", default="smollm2-135m")
    sensitivity.add_argument("--tokens", type=int, default=2048, help="calibration tokens scored per measurement")
    sensitivity.add_argument("--algorithm", default="rtn")
    report = commands.add_parser("report", help="Markdown table and frontier plot from results.jsonl")
    report.add_argument("--out", required=True)
    report.add_argument("--plot", help="PNG path for the size / perplexity frontier")
    args = parser.parse_args(argv)
    if args.command == "run":
        record = run_candidate(args)
        print(json.dumps({k: record[k] for k in ("name", "x_fp16", "decode_tokens_per_s")} |
                         {k: record["quality"][k] for k in ("perplexity_delta_pct", "perplexity_delta_interval_pct",
                                                            "greedy_agreement")}))
    elif args.command == "sensitivity":
        config = load_config(args.config)
        base_dir = model_dir_for(config, config.model(args.model)) / "base"
        texts = load_calibration_texts(CalibrationSpec(file="builtin:calibration_large.txt"))
        costs = layer_sensitivity(base_dir, texts, args.tokens, args.algorithm, 64, {r"mlp\.down_proj": 128})
        (Path(args.out) / "sensitivity.json").write_text(json.dumps(costs, indent=1) + "\n")
    elif args.command == "speed":
        print(json.dumps(speeds_in_turns([Path(f) for f in args.folders], args.rounds), indent=1))
    else:
        from quantize.fidelity_report import render_report

        print(render_report(Path(args.out) / "results.jsonl", Path(args.plot) if args.plot else None))


if __name__ == "__main__":
    main()
