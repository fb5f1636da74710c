"""A whole `quantserve loadtest run`: check the target, run every (variant, level) step, write the report.

Results so far are always written, also when the target goes away or the run is interrupted.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

from loadtest.cost import Slo
from loadtest.machine import describe_machine, versions
from loadtest.records import RequestRecord
from loadtest.report import write_report
from loadtest.results import StepWindow, VariantCost, build_results
from loadtest.runner import StepSettings, StepSpec, read_windows, run_step
from loadtest.steps import parse_duration, parse_levels
from loadtest.synthetic import load_tokenizer, write_synthetic_prompts
from loadtest.target import TIMEOUT, LoadtestError, check_target, list_models, probe, select_model_ids
from loadtest.workload import length_sampler, load_prompt_set, output_length_sampler
from quantserve.config import ConfigError, load_config
from quantserve.manifest import BASE_VARIANT
from quantserve.prices import DEFAULT_PRICES_PATH, PriceError, PriceTable, load_prices, price_per_hour

DEFAULT_PROFILE = "cpu-2vcpu"
DEFAULT_USER_LEVELS = "1,2,4,8"
DEFAULT_PROMPTS = "short"
SYNTHETIC = "synthetic"
SYNTHETIC_PROMPTS = "prompts.jsonl"  # written into each step's folder when --input-tokens is given


class RunFailed(RuntimeError):
    """The run stopped early; `report` is where the results so far were written."""

    def __init__(self, message: str, report: Path) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Sweep:
    model: str
    variants: str
    levels: list[float]
    settings: StepSettings  # what every step shares; each step adds its model id, level and folder
    attainment: float
    config_path: Path
    hardware_profile: str | None
    prices: PriceTable
    prices_path: Path
    folder: Path
    input_tokens: str | None = None  # synthetic prompts of this length distribution, made with `tokenizer`
    tokenizer: Path | None = None


def sweep_from_args(args: argparse.Namespace) -> Sweep:
    """Validate every argument before any load is sent."""
    target = check_target(args.target, args.allow_remote_target)
    mode = "rate" if args.rate else "users"
    levels = parse_levels(args.rate or args.users or DEFAULT_USER_LEVELS, mode)
    output_length_sampler(args.max_tokens, random.Random(args.seed))
    if not 0 < args.slo_attainment <= 1 or args.max_requests < 1 or args.rate_users < 1:
        raise ValueError("--slo-attainment must be in (0, 1]; --max-requests and --rate-users at least 1")
    prices_path = Path(args.prices) if args.prices else DEFAULT_PRICES_PATH
    run_id = args.run_id or f"{datetime.now():%Y%m%d-%H%M%S}-{args.model.replace(':', '-')}"
    folder = Path(args.reports_dir) / run_id
    prompts, tokenizer = _prompt_source(args)
    settings = StepSettings(target=target, endpoint=args.endpoint, mode=mode, warmup_s=parse_duration(args.warmup),
                            duration_s=parse_duration(args.duration), max_requests=args.max_requests,
                            rate_users=args.rate_users, prompts=prompts, max_tokens=args.max_tokens,
                            slo=Slo(args.slo_ttft_ms or None, args.slo_tpot_ms or None), seed=args.seed,
                            arrivals=args.arrivals, exact_output=args.exact_output, temperature=args.temperature)
    return Sweep(model=args.model, variants=args.variants, levels=levels, settings=settings,
                 attainment=args.slo_attainment, config_path=Path(args.config), hardware_profile=args.hardware_profile,
                 prices=_load_prices(prices_path), prices_path=prices_path, folder=folder,
                 input_tokens=args.input_tokens, tokenizer=tokenizer)


def _prompt_source(args: argparse.Namespace) -> tuple[str, Path | None]:
    """The prompt set the steps read, or "synthetic" and the tokenizer that writes each step's prompts."""
    if not args.input_tokens:
        load_prompt_set(args.prompts or DEFAULT_PROMPTS)
        return args.prompts or DEFAULT_PROMPTS, None
    if args.prompts:
        raise ValueError("--prompts and --input-tokens exclude each other: a prompt set, or synthetic prompts")
    length_sampler(args.input_tokens, random.Random(args.seed), "input length")
    tokenizer = Path(args.tokenizer) if args.tokenizer else default_tokenizer(Path(args.config), args.model)
    load_tokenizer(tokenizer)
    return SYNTHETIC, tokenizer


def default_tokenizer(config_path: Path, model: str) -> Path:
    """The tokenizer.json in the model's base folder (`<models_dir>/<model>/base/`)."""
    try:
        models_dir = Path(load_config(config_path).models_dir)
    except ConfigError:
        models_dir = Path("models")
    return models_dir / model.split(":", 1)[0] / BASE_VARIANT / "tokenizer.json"


def run_sweep(sweep: Sweep, progress: Callable[[str], None]) -> Path:
    target, endpoint = sweep.settings.target, sweep.settings.endpoint
    with httpx.Client(timeout=TIMEOUT) as client:
        available = list_models(client, target)
        model_ids = select_model_ids(available, sweep.model, sweep.variants)
        answered = {model_id: probe(client, target, model_id, endpoint) for model_id in model_ids}
        costs = {label_for(model_id): variant_cost(sweep, model_id, progress) for model_id in model_ids}
        meta = _meta(sweep, model_ids, available, answered)
        records, windows, error = _run_steps(sweep, model_ids, client, progress)
    meta.update(status="incomplete" if error else "complete", error=error, finished_at=_now())
    results = build_results(meta, records, costs, sweep.settings.slo, sweep.attainment, windows)
    report = write_report(sweep.folder, results, records)
    if error:
        raise RunFailed(error, report)
    return report


def write_step_prompts(sweep: Sweep, step: StepSpec, progress) -> None:
    """The step's own synthetic prompts, one per request it may send: none repeats within the step, across steps or
    across runs (seeded by the run id), so a server's prefix cache never answers from a prompt it saw before."""
    if not step.prompts:
        return
    seed = f"{sweep.settings.seed}/{sweep.folder.name}/{step.label}/{step.level:g}"
    lengths = write_synthetic_prompts(Path(step.prompts), sweep.tokenizer, sweep.input_tokens,
                                      sweep.settings.max_requests, seed)
    progress(f"  {step.name}: {len(lengths)} synthetic prompts of {min(lengths)}..{max(lengths)} tokens")


def _run_steps(sweep: Sweep, model_ids: list[str], client: httpx.Client, progress) -> tuple[list, dict, str]:
    records: list[RequestRecord] = []
    windows: dict[tuple[str, float], StepWindow] = {}
    try:
        for model_id in model_ids:
            for level in sweep.levels:
                step = step_for(sweep, model_id, level)
                settings = step.settings
                progress(f"{step.name}: warm-up {settings.warmup_s:g} s, then {settings.duration_s:g} s measured")
                write_step_prompts(sweep, step, progress)
                found = run_step(step, progress)
                records += found
                windows.update({(step.label, window.level): window for window in read_windows(step)})
                progress(f"{step.name}: {len(found)} requests, {sum(not r.ok for r in found)} errors")
                if not any(record.phase == "measure" for record in found):
                    progress(f"  warning: nothing measured in {step.name}; raise --max-requests or shorten --warmup")
                _check_target_alive(sweep, step, found, client)
    except (LoadtestError, RuntimeError) as exc:
        return records, windows, str(exc)
    except KeyboardInterrupt as exc:
        return records + getattr(exc, "records", []), windows, "interrupted"
    return records, windows, ""


def step_for(sweep: Sweep, model_id: str, level: float) -> StepSpec:
    label = label_for(model_id)
    folder = sweep.folder / "steps" / f"{label}-{level:g}".replace(":", "-")
    prompts = str(folder / SYNTHETIC_PROMPTS) if sweep.input_tokens else ""
    return StepSpec(sweep.settings, model_id=model_id, label=label, level=level, folder=folder, prompts=prompts)


def _check_target_alive(sweep: Sweep, step: StepSpec, records: list[RequestRecord], client: httpx.Client) -> None:
    if records and all(record.status for record in records):
        return
    try:
        list_models(client, sweep.settings.target)
    except LoadtestError as exc:
        raise LoadtestError(f"the target went away during {step.name}: {exc}") from None
    if not records:
        raise LoadtestError(f"{step.name} sent no requests; see {step.folder / 'locust.log'}")


def label_for(model_id: str) -> str:
    """A variant's name in tables: the part after `model:`, or the model id as given."""
    return model_id.split(":", 1)[1] if ":" in model_id else model_id


def variant_cost(sweep: Sweep, model_id: str, progress) -> VariantCost:
    profile, replicas = _profile_from_config(sweep.config_path, model_id)
    if sweep.hardware_profile:
        profile = sweep.hardware_profile
    elif profile is None:
        profile = DEFAULT_PROFILE
        progress(f"{model_id}: not in {sweep.config_path}; priced as {DEFAULT_PROFILE}, 1 replica")
    try:
        usd = price_per_hour(sweep.prices, profile, replicas)
    except PriceError as exc:
        raise LoadtestError(str(exc)) from None
    return VariantCost(label_for(model_id), profile, replicas, usd)


def _profile_from_config(path: Path, model_id: str) -> tuple[str | None, int]:
    """The variant's hardware profile and replica count (autoscaling: its maximum) from the serving config."""
    if not path.exists():
        return None, 1
    try:
        model = load_config(path).model(model_id.split(":", 1)[0])
        variant = model.variant(model_id.split(":", 1)[1] if ":" in model_id else model.default_variant)
    except (ConfigError, KeyError):
        return None, 1
    serve = variant.serve
    replicas = serve.autoscaling.max_replicas if serve.autoscaling else serve.replicas
    return serve.hardware_profile, max(replicas, 1)


def _load_prices(path: Path) -> PriceTable:
    try:
        return load_prices(path)
    except PriceError as exc:
        raise LoadtestError(str(exc)) from None


def _meta(sweep: Sweep, model_ids: list[str], available: list[str], answered: dict[str, str]) -> dict:
    settings = sweep.settings
    return {
        "run_id": sweep.folder.name, "status": "running", "error": "", "started_at": _now(), "finished_at": None,
        "config": {
            "target": settings.target, "model": sweep.model, "model_ids": model_ids, "endpoint": settings.endpoint,
            "mode": settings.mode, "levels": sweep.levels, "warmup_s": settings.warmup_s,
            "step_s": settings.duration_s, "max_requests_per_step": settings.max_requests,
            "rate_users": settings.rate_users, "arrivals": settings.arrivals if settings.mode == "rate" else None,
            "prompts": settings.prompts, **_prompt_counts(sweep), "input_tokens": sweep.input_tokens,
            "tokenizer": str(sweep.tokenizer) if sweep.tokenizer else None, "max_tokens": settings.max_tokens,
            "exact_output": settings.exact_output, "temperature": settings.temperature,
            "seed": settings.seed, "config_file": str(sweep.config_path),
        },
        "prices": {"file": sweep.prices_path.name, "profiles": sweep.prices.model_dump(mode="json")["profiles"]},
        "versions": versions(),
        "machine": describe_machine(),
        "server": {"models": available, "probe_answered_by": answered},
    }


def _prompt_counts(sweep: Sweep) -> dict:
    """How many of the set's prompts ask for constrained output (a JSON response_format): a run of `extraction`
    beside one of `short` shows per variant what constraints cost. Synthetic prompts are all free."""
    if sweep.input_tokens:
        return {"prompt_count": None, "constrained_prompts": 0}
    prompts = load_prompt_set(sweep.settings.prompts)
    return {"prompt_count": len(prompts), "constrained_prompts": sum(prompt.constrained for prompt in prompts)}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


