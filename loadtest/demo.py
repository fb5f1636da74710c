"""`quantserve demo` (`make demo`), after the variants are built: start the application on 127.0.0.1, run a short
load-test sweep over every variant of the embedded model, write the report, stop the application."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from quantserve.constants import DEFAULT_CONFIG_PATH
from serving.launcher import AppStartError, running_app


def add_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="serve the built variants on 127.0.0.1, load-test each, write a report",
                                   description=__doc__)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG_PATH))
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--users", default="1,2")
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--warmup", default="3s")
    parser.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    log = Path(tempfile.mkdtemp(prefix="quantserve-demo-")) / "serve.log"
    print(f"==> starting the application (log: {log})", flush=True)
    try:
        with running_app(Path(args.config), log) as app:
            print(f"==> serving on {app.url}; load test over every variant of {args.model}", flush=True)
            command = [sys.executable, "-m", "quantserve.cli", "loadtest", "run", "--target", app.url,
                       "--model", args.model, "--variants", "all", "--users", args.users,
                       "--duration", args.duration, "--warmup", args.warmup, "--max-tokens", "32",
                       "--slo-ttft-ms", "2000", "--slo-itl-ms", "250", "--config", args.config]
            result = subprocess.run(command)
    except AppStartError as exc:
        print(f"demo: the application did not start: {exc}", file=sys.stderr)
        return 1
    print("==> application stopped", flush=True)
    return result.returncode

