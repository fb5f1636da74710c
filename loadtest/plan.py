"""`quantserve plan`: from measured load tests, the variant, replica count and monthly cost that serve a target
request rate within its SLOs and quality floor; refuses in one line when none can."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

from loadtest.plan_inputs import load_runs, model_of, points_by_variant, variant_quality
from loadtest.plan_report import headline, table_text, write_plan_report
from loadtest.planner import HOURS_PER_MONTH, Target, Verdict, judge, recommend, refusal
from loadtest.target import LoadtestError
from quantserve.constants import DEFAULT_CONFIG_PATH
from quantserve.prices import DEFAULT_PRICES_PATH, PriceError, load_prices, price_per_hour


def add_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plan", help="pick variant, replicas and hardware for a target load from load tests",
                                   description=__doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN", help="load-test results: run folders or results.json files")
    parser.add_argument("--rate", type=float, required=True, help="target requests per second")
    parser.add_argument("--slo-ttft-p90-ms", type=float, required=True, help="p90 time to first token bound")
    parser.add_argument("--slo-itl-p90-ms", type=float, required=True, help="p90 inter-token latency bound")
    parser.add_argument("--slo-e2e-p90-ms", type=float, help="p90 end-to-end latency bound (optional)")
    parser.add_argument("--input-tokens", type=float, help="prompt tokens per request as the server counts them "
                        "(chat template included; default: as measured)")
    parser.add_argument("--output-tokens", type=float, help="output tokens per request (default: as measured)")
    parser.add_argument("--max-ppl-increase-pct", type=float, help="quality floor: most perplexity increase, in %%")
    parser.add_argument("--min-greedy-agreement", type=float, help="quality floor: least greedy agreement (0..1)")
    parser.add_argument("--headroom", type=float, default=0.2, help="spare capacity over the rate (default: 0.2)")
    parser.add_argument("--hours-per-month", type=float, default=HOURS_PER_MONTH)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="config mapping variants to builds")
    parser.add_argument("--models-dir", help="where the model manifests are (default: the config's models_dir)")
    parser.add_argument("--prices", default=str(DEFAULT_PRICES_PATH), help="price table (default: %(default)s)")
    parser.add_argument("--output-dir", help="where plan.md, plan.html and the plot go (default: reports/plan-TIME)")
    parser.set_defaults(handler=run_plan)


def target_from_args(args: argparse.Namespace) -> Target:
    if args.rate <= 0 or args.headroom < 0:
        raise LoadtestError("--rate must be positive and --headroom not negative")
    return Target(rate_rps=args.rate, ttft_p90_ms=args.slo_ttft_p90_ms, itl_p90_ms=args.slo_itl_p90_ms,
                  e2e_p90_ms=args.slo_e2e_p90_ms, input_tokens=args.input_tokens, output_tokens=args.output_tokens,
                  max_ppl_increase_pct=args.max_ppl_increase_pct, min_greedy_agreement=args.min_greedy_agreement,
                  headroom=args.headroom, hours_per_month=args.hours_per_month)


def build_plan(args: argparse.Namespace) -> tuple[Target, list[Verdict], dict]:
    target = target_from_args(args)
    runs = load_runs([Path(run) for run in args.runs])
    model = model_of(runs)
    points = points_by_variant(runs)
    quality = variant_quality(Path(args.config), Path(args.models_dir) if args.models_dir else None, model,
                              sorted({label for label, _ in points}))
    prices = load_prices(args.prices)
    usd_per_hour = {profile: price_per_hour(prices, profile) for _, profile in points}
    verdicts = [judge(Verdict(label, profile, quality[label], found), target, usd_per_hour[profile])
                for (label, profile), found in sorted(points.items())]
    inputs = {"model": model, "runs": [run.get("run_id") for run in runs], "target": vars(target),
              "prices": {"file": Path(args.prices).name, "usd_per_replica_hour": usd_per_hour}}
    return target, verdicts, inputs


def run_plan(args: argparse.Namespace) -> int:
    try:
        target, verdicts, inputs = build_plan(args)
    except (LoadtestError, PriceError) as exc:
        print(f"quantserve: error: {exc}", file=sys.stderr)
        return 2
    recommended = recommend(verdicts)
    folder = Path(args.output_dir) if args.output_dir else Path("reports") / f"plan-{datetime.now():%Y%m%d-%H%M%S}"
    report = write_plan_report(folder, target, verdicts, recommended, inputs)
    print(table_text(verdicts, recommended))
    print(headline(target, recommended).replace("**", ""))
    print(f"plan: {report} (and plan.html)")
    if recommended is None:
        print(f"quantserve: error: {refusal(verdicts, target)}", file=sys.stderr)
        return 1
    return 0
