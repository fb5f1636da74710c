"""`quantserve loadtest …`: sweep load over a model's variants and report latency against cost."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from quantserve.constants import DEFAULT_CONFIG_PATH


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    loadtest = subparsers.add_parser("loadtest", help="load-test served variants and report latency against cost")
    commands = loadtest.add_subparsers(dest="loadtest_command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="sweep load levels (per variant) with Locust and write a report")
    _add_run_options(run)
    run.set_defaults(handler=_run)
    compare = commands.add_parser("compare", help="put several runs side by side")
    compare.add_argument("runs", nargs="+", metavar="RUN", help="run folders (or run ids under --reports-dir)")
    compare.add_argument("--reports-dir", default="reports", help="where run ids are looked up (default: %(default)s)")
    compare.add_argument("--output", help="also write the comparison to this Markdown file")
    compare.set_defaults(handler=_compare)


def _add_run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--target", default="http://127.0.0.1:8000", help="server base URL (default: %(default)s)")
    run.add_argument("--allow-remote-target", action="store_true", help="allow a target that is not loopback")
    run.add_argument("--model", required=True, help="model id, MODEL or MODEL:VARIANT")
    run.add_argument("--variants", default="", help="'all' (every MODEL:* the server lists) or a comma list")
    run.add_argument("--endpoint", choices=["chat", "embeddings"], default="chat")
    levels = run.add_mutually_exclusive_group()
    levels.add_argument("--users", help="fixed-concurrency levels, e.g. 1,2,4,8 (default: 1,2,4,8)")
    levels.add_argument("--rate", help="open-loop request-rate levels in requests/s, e.g. 0.5,1,2")
    run.add_argument("--arrivals", choices=["poisson", "constant"], default="poisson",
                     help="--rate: exponential or equal gaps between arrivals (default: %(default)s)")
    run.add_argument("--rate-users", type=int, default=64,
                     help="--rate: the client's cap on requests in flight; reported when hit (default: %(default)s)")
    run.add_argument("--duration", default="30s", help="measured time per step (default: %(default)s)")
    run.add_argument("--warmup", default="5s", help="warm-up per step, excluded from results (default: %(default)s)")
    run.add_argument("--max-requests", type=int, default=500, help="cap on requests per step, warm-up included")
    run.add_argument("--prompts", help="prompt set: short, long, mix, extraction (JSON-schema answers) or a JSONL "
                     "file (default: short)")
    run.add_argument("--input-tokens", help="synthetic prompts of N tokens: N, uniform:LO:HI or normal:MEAN:SD")
    run.add_argument("--tokenizer", help="tokenizer.json for --input-tokens (default: the model's base folder)")
    run.add_argument("--max-tokens", default="64", help="output length: N, uniform:LO:HI, normal:MEAN:SD, exp:MEAN")
    run.add_argument("--exact-output", action=argparse.BooleanOptionalAction, default=True,
                     help="send ignore_eos and min_tokens = max_tokens, so outputs have the asked length (default)")
    run.add_argument("--temperature", type=float, help="sampling temperature (default: not sent; OpenAI's is 1.0)")
    run.add_argument("--slo-ttft-ms", type=float, default=0, help="SLO bound on time to first token (0: none)")
    run.add_argument("--slo-tpot-ms", "--slo-itl-ms", type=float, default=0,
                     help="SLO bound on a request's mean time per output token (0: none)")
    run.add_argument("--slo-attainment", type=float, default=0.9, help="share of requests that must meet the SLO")
    run.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="config naming each variant's hardware profile")
    run.add_argument("--hardware-profile", help="price every variant with this profile instead of the config's")
    run.add_argument("--prices", help="price table (default: quantserve/prices.yaml)")
    run.add_argument("--reports-dir", default="reports", help="reports go to REPORTS_DIR/RUN_ID (default: %(default)s)")
    run.add_argument("--run-id", help="name of the report folder (default: time and model)")
    run.add_argument("--seed", type=int, default=0, help="seed for prompts, lengths and arrivals")


def _run(args: argparse.Namespace) -> None:
    from loadtest.sweep import RunFailed, run_sweep, sweep_from_args
    from loadtest.target import LoadtestError

    try:
        sweep = sweep_from_args(args)
        report = run_sweep(sweep, progress=functools.partial(print, flush=True))
    except (LoadtestError, ValueError) as exc:
        _fail(str(exc), 2)
    except RunFailed as exc:
        print(f"results so far: {exc.report}")
        _fail(str(exc), 1)
    print(f"report: {report}")


def _compare(args: argparse.Namespace) -> None:
    from loadtest.compare import compare_runs, resolve_run
    from loadtest.target import LoadtestError

    try:
        text = compare_runs([resolve_run(run, Path(args.reports_dir)) for run in args.runs])
    except LoadtestError as exc:
        _fail(str(exc), 2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


def _fail(message: str, code: int) -> None:
    print(f"quantserve: error: {message}", file=sys.stderr)
    raise SystemExit(code)
