"""`make bench` (`quantserve bench`): quantserve against its peers and the hardware limit, as ratios.

This machine is shared and noisy, so every figure is a ratio of two things measured side by side in one run
(interleaved, repeated, the median kept). Sections: (1) router overhead, (2) continuous batching against
transformers, (3) decode against the memory-bandwidth ceiling with a profile, (4) the ONNX engine against vLLM's,
(5) the variants with $ per 1M tokens from a short load test, (6) the load generator's headroom, (7) what
constrained decoding (a JSON schema) costs the ONNX engine, (8) prefill tokens/s per variant, (9) one intra-op
thread against two, (10) a long prompt arriving beside decoding streams, (11) the prefix cache, (12) sampling
at the default temperature against greedy. Writes bench/results.json and BENCHMARKS.md; `--quick` runs every
section at its smallest to keep the scripts working.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import yaml

from loadtest.bench import constraints, engines, headroom, prefill, router, sampling, variants
from loadtest.bench.report import render_markdown
from loadtest.bench.router_cpu import application_processes
from loadtest.machine import describe_machine, versions
from quantserve.config import load_config, parse_config
from quantserve.constants import DEFAULT_CONFIG_PATH
from quantserve.manifest import read_manifest
from serving.launcher import running_app
from serving.serve_cli import LOOPBACK_ENV

SECTIONS = ("router", "batching", "ceiling", "backends", "variants", "headroom", "constraints", "prefill", "threads",
            "long_prompt", "prefix_cache", "sampling")
MODEL = "smollm2-135m"
# Data planes, local default first: `quantserve serve`'s flags for each.
ROUTER_MODES = [("throughput-optimized", ()), ("throughput-optimized + HAProxy", ("--haproxy",)),
                ("default data plane", ("--no-throughput-mode",))]
ROUTED = "onnx-int4"


def bench_config(config_path: Path, models_dir: str, live: list[str] | None) -> dict:
    """The config file with only the chat model; `live` variants served (those the config enables when None)."""
    config = yaml.safe_load(config_path.read_text())
    config["models_dir"] = models_dir
    config["models"] = [m for m in config["models"] if m["name"] == MODEL]
    for variant in config["models"][0]["variants"]:
        serve = variant.setdefault("serve", {})
        serve["enabled"] = serve.get("enabled", True) if live is None else variant["name"] in live
    return config


def serving_sections(args, plan: dict, folder: Path) -> dict:
    """Sections that need the application running: router overhead (in each data-plane mode, the routed variant
    alone) and the variants (every variant; in quick mode only the routed one, so one application serves both)."""
    results = {}
    routed_only = folder / "router.yaml"
    routed_only.write_text(yaml.safe_dump(bench_config(Path(args.config), args.models_dir, [ROUTED])))
    every_variant = folder / "bench.yaml"
    every_variant.write_text(yaml.safe_dump(bench_config(Path(args.config), args.models_dir, None)))
    variants_config = routed_only if args.quick else every_variant
    if "router" in args.sections:
        results["router"] = []
        for mode, extra in plan["router_modes"]:
            print(f"bench: router overhead, {mode}", flush=True)
            with running_app(routed_only, folder / f"router-{mode}.log", extra_args=extra) as app:
                profiles = folder / f"profile-{mode.replace(' ', '-')}"
                profiles.mkdir()
                row = router.bench_router_in_subprocess(app.url, app.ray_address, f"{MODEL}--{ROUTED}",
                                                        f"{MODEL}:{ROUTED}", plan,
                                                        application_processes(app.process.pid), profiles)
                results["router"].append({"mode": mode, "machine_load": prefill.machine_load(), **row})
                if args.quick and "variants" in args.sections:
                    results |= variants_section(app, variants_config, plan, folder)
    if "variants" in args.sections and "variants" not in results:
        with running_app(variants_config, folder / "variants.log") as app:
            results |= variants_section(app, variants_config, plan, folder)
    return results


def variants_section(app, config_file: Path, plan: dict, folder: Path) -> dict:
    print("bench: variants, with a short load test of each", flush=True)
    sweep = variants.short_sweep(app.url, config_file, plan["sweep_users"], plan["sweep_duration"], folder)
    return {"variants": variants.bench_variants(parse_config(yaml.safe_load(config_file.read_text())), sweep),
            "sweep_max_requests_per_s": max(s["requests_per_s"] for s in sweep["summaries"])}


def engine_sections(args, plan: dict, model_dir: Path) -> dict:
    results = {}
    if "ceiling" in args.sections:
        print("bench: decode against the bandwidth ceiling", flush=True)
        results["ceiling"] = engines.bench_ceiling(model_dir, plan["repeats"], plan["tokens"])
        results["profile"] = engines.profile_decode_ops(engines.variant_folder(model_dir, "onnx-int4"),
                                                        plan["profile_steps"])
    if "batching" in args.sections:
        print("bench: continuous batching against transformers", flush=True)
        results["batching"] = engines.bench_batching(model_dir, plan["levels"], plan["repeats"], plan["tokens"])
        ends = (plan["levels"][0], plan["levels"][-1])
        results["batching_profile"] = {str(n): engines.profile_decode_ops(model_dir / "onnx-fp32",
                                                                          plan["profile_steps"], n) for n in ends}
    if "backends" in args.sections:
        print("bench: the ONNX engine against vLLM's", flush=True)
        results["backends"] = engines.bench_backends(model_dir, plan["backend_levels"], plan["repeats"],
                                                     plan["tokens"], plan["vllm_dtypes"])
    if "sampling" in args.sections:
        print("bench: sampling at the default temperature against greedy", flush=True)
        results["sampling"] = sampling.bench_sampling(model_dir, plan["sampling_levels"], plan["sampling_repeats"],
                                                      plan["tokens"])
    if "constraints" in args.sections:
        print("bench: constrained decoding in the ONNX engine", flush=True)
        results["constraints"] = constraints.bench_constraints(model_dir, plan["constraint_levels"], plan["repeats"],
                                                               plan["tokens"])
    return results | prompt_sections(args, plan, model_dir)


def prompt_sections(args, plan: dict, model_dir: Path) -> dict:
    """Issue 16's prompt-side sections (loadtest/bench/prefill.py); each row records the machine's load."""
    runs = {
        "prefill": ("prefill tokens/s per variant", lambda: prefill.bench_prefill(
            model_dir, plan["repeats"], plan["prefill_tokens"])),
        "threads": ("one intra-op thread against two", lambda: prefill.bench_threads(
            model_dir, plan["repeats"], plan["tokens"], plan["thread_levels"])),
        "long_prompt": ("a long prompt arriving beside decoding streams", lambda: prefill.bench_long_prompt(
            model_dir, plan["repeats"], plan["long_prompt_tokens"], plan["long_prompt_streams"], plan["tokens"])),
        "prefix_cache": ("a request sharing a prefix", lambda: prefill.bench_prefix_cache(
            model_dir, plan["repeats"], plan["prefix_tokens"])),
    }
    results = {}
    for name, (title, measure) in runs.items():
        if name in args.sections:
            print(f"bench: {title}", flush=True)
            load = prefill.machine_load()
            results[name] = [{**row, **load} for row in measure()]
    if "prefill" in args.sections:
        results["prefill_profile"] = prefill.profile_prefill_ops(model_dir, plan["prefill_tokens"])
    if "long_prompt" in args.sections:
        chunk = next(r["chunk_tokens"] for r in results["long_prompt"] if r["prefill"] == "chunked")
        results["long_prompt_profile"] = prefill.profile_chunk_beside_step(
            model_dir, plan["long_prompt_streams"], max(2, int(chunk)), plan["profile_steps"])
    return results


RUN_KEYS = ("date", "quick", "plan", "machine", "versions", "sections", "config_file")


def merged_with_previous(results: dict, previous_path: Path) -> dict:
    """A full run of some sections keeps the other sections of the previous full run in the same results file; the
    sections measured now carry their own date, machine and plan under `runs` (the report names them)."""
    if results["quick"] or set(results["sections"]) == set(SECTIONS) or not previous_path.exists():
        return results
    previous = json.loads(previous_path.read_text())
    if previous.get("quick"):
        return results
    run = {key: results[key] for key in ("date", "machine", "plan", "versions")}
    measured = {key: value for key, value in results.items() if key not in RUN_KEYS}
    sections = [*previous["sections"], *(s for s in results["sections"] if s not in previous["sections"])]
    return {**previous, **measured, "sections": sections,
            "runs": {**previous.get("runs", {}), **dict.fromkeys(results["sections"], run)}}


def add_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="measure quantserve against its peers and the hardware limit",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG_PATH))
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--quick", action="store_true", help="one round, smallest sizes: keeps the scripts working")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma list of %(default)s")
    parser.add_argument("--output", default="bench", help="folder for results.json (default: %(default)s)")
    parser.add_argument("--markdown", default="BENCHMARKS.md")
    parser.add_argument("--render", metavar="RESULTS_JSON", help="only write --markdown from a results.json")
    parser.set_defaults(handler=run_bench, parser=parser)


def run_bench(args: argparse.Namespace) -> int:
    if args.render:
        Path(args.markdown).write_text(render_markdown(json.loads(Path(args.render).read_text())))
        return 0
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown:
        args.parser.error(f"unknown sections {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    load_config(args.config)  # one-line error now if the config is bad
    model_dir = Path(args.models_dir) / MODEL
    if read_manifest(model_dir) is None:
        print(f"bench: nothing built in {model_dir}; run `make variants` first", file=sys.stderr)
        return 2
    # The router section joins the application's Ray cluster as a driver: on 127.0.0.1, with the cluster's token
    # (a local Ray cluster turns token authentication on and keeps the token in Ray's own folder).
    os.environ.update({**LOOPBACK_ENV, "RAY_AUTH_MODE": "token"})
    plan = quick_plan() if args.quick else full_plan()
    folder = Path(tempfile.mkdtemp(prefix="quantserve-bench-"))
    results = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "quick": args.quick, "plan": plan,
               "machine": describe_machine(), "versions": versions(), "sections": args.sections,
               "config_file": str(args.config)}
    results |= engine_sections(args, plan, model_dir)
    results |= serving_sections(args, plan, folder)
    if "headroom" in args.sections:
        print("bench: load-generator headroom", flush=True)
        results["headroom"] = headroom.bench_headroom(plan["headroom_users"], plan["headroom_seconds"], folder)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results = merged_with_previous(results, output / "results.json")
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    text = render_markdown(results)
    if args.markdown:
        Path(args.markdown).write_text(text)
    print(text)
    return 0


def full_plan() -> dict:
    return {"repeats": 3, "tokens": 48, "levels": [1, 2, 4, 8, 16], "backend_levels": [1, 2, 4, 8],
            "vllm_dtypes": ["float32", "bfloat16"], "profile_steps": 64, "router_requests": 64,
            "router_modes": ROUTER_MODES, "router_clients": [8, 32], "router_streams": 8,
            "router_idle_seconds": 3, "router_profile_seconds": 8,
            "sweep_users": "1,2,4", "sweep_duration": "15s", "headroom_users": [8, 32], "headroom_seconds": 10,
            "constraint_levels": [1, 8], "prefill_tokens": 512, "thread_levels": [1, 4], "long_prompt_tokens": 2000,
            "long_prompt_streams": 4, "prefix_tokens": 1000, "sampling_levels": [1, 8],
            "sampling_repeats": 7}


def quick_plan() -> dict:
    return {"repeats": 1, "tokens": 8, "levels": [1, 2], "backend_levels": [1, 2], "vllm_dtypes": ["float32"],
            "profile_steps": 4, "router_requests": 8, "router_modes": ROUTER_MODES[:1], "router_clients": [8, 32],
            "router_streams": 2, "router_idle_seconds": 0.5, "router_profile_seconds": 0,
            "sweep_users": "1", "sweep_duration": "3s", "headroom_users": [4], "headroom_seconds": 3,
            "constraint_levels": [1, 2], "prefill_tokens": 64, "thread_levels": [1], "long_prompt_tokens": 256,
            "long_prompt_streams": 2, "prefix_tokens": 200, "sampling_levels": [1, 2],
            "sampling_repeats": 1}

