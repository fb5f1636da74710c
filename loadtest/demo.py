"""`quantserve demo` (`make demo`), after the variants are built: start the application on 127.0.0.1, run a short
open-loop load test over every variant of the embedded model (synthetic prompts of a fixed length, exact output
lengths), write the report, stop the application, then plan capacity for an example target from that run."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

from quantserve.constants import DEFAULT_CONFIG_PATH
from serving.launcher import AppStartError, running_app

# The example the demo plans for (stated in the README): 2 requests/s of this workload, p90 TTFT within 3 s and p90
# ITL within 200 ms, at most 35 % more perplexity than the base model, 20 % spare capacity.
PLAN_TARGET = ("--rate", "2", "--slo-ttft-p90-ms", "3000", "--slo-itl-p90-ms", "200",
               "--max-ppl-increase-pct", "35", "--headroom", "0.2")
PLAN_REFUSED = 1  # `quantserve plan` found no variant that meets the target: an answer, not a failed demo


def add_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="serve the built variants on 127.0.0.1, load-test each, plan capacity",
                                   description=__doc__)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG_PATH))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--rate", default="0.5,1,2", help="open-loop request rates per step (default: %(default)s)")
    parser.add_argument("--duration", default="12s")
    parser.add_argument("--warmup", default="5s")
    parser.add_argument("--input-tokens", default="128")
    parser.add_argument("--max-tokens", default="32")
    parser.add_argument("--reports-dir", default="reports")
    parser.set_defaults(handler=run_demo)


def load_test_command(args: argparse.Namespace, url: str, run_id: str) -> list[str]:
    return [sys.executable, "-m", "quantserve.cli", "loadtest", "run", "--target", url, "--model", args.model,
            "--variants", "all", "--rate", args.rate, "--duration", args.duration, "--warmup", args.warmup,
            "--input-tokens", args.input_tokens, "--max-tokens", args.max_tokens, "--slo-ttft-ms", "2000",
            "--slo-tpot-ms", "250", "--config", args.config, "--reports-dir", args.reports_dir, "--run-id", run_id]


def plan_command(args: argparse.Namespace, run_id: str) -> list[str]:
    run = Path(args.reports_dir) / run_id
    return [sys.executable, "-m", "quantserve.cli", "plan", str(run), *PLAN_TARGET, "--config", args.config,
            "--output-dir", str(run / "plan")]


def run_demo(args: argparse.Namespace) -> int:
    log = Path(tempfile.mkdtemp(prefix="quantserve-demo-")) / "serve.log"
    run_id = f"{datetime.now():%Y%m%d-%H%M%S}-demo"
    print(f"==> starting the application (log: {log})", flush=True)
    try:
        with running_app(Path(args.config), log) as app:
            print(f"==> serving on {app.url}; load test over every variant of {args.model}", flush=True)
            result = subprocess.run(load_test_command(args, app.url, run_id))
    except AppStartError as exc:
        print(f"demo: the application did not start: {exc}", file=sys.stderr)
        return 1
    print("==> application stopped", flush=True)
    if result.returncode != 0:
        return result.returncode
    print(f"==> capacity plan for an example target ({' '.join(PLAN_TARGET)}) from that run", flush=True)
    code = subprocess.run(plan_command(args, run_id)).returncode
    return 0 if code == PLAN_REFUSED else code
