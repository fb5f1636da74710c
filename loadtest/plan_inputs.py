"""What `quantserve plan` reads: measured points from runs' results.json, each variant's quality from its model's
manifest, prices from the price table."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from loadtest.planner import KEPT_UP, Point
from loadtest.target import LoadtestError
from quantserve.config import ConfigError, load_config
from quantserve.manifest import BASE_VARIANT, ModelManifest, built_name, read_manifest

NEEDED = ("itl_ms", "offered_rps", "achieved_rps", "prompt_len", "output_len")


def load_runs(paths: list[Path]) -> list[dict]:
    """results.json files, or run folders holding one."""
    runs = []
    for path in paths:
        file = path / "results.json" if path.is_dir() else path
        try:
            runs.append(json.loads(file.read_text()))
        except (OSError, ValueError) as exc:
            raise LoadtestError(f"cannot read results {file}: {exc}") from None
    return runs


def points_by_variant(runs: list[dict]) -> dict[tuple[str, str], list[Point]]:
    """Measured points per (variant label, hardware profile), across runs."""
    grouped: dict[tuple[str, str], list[Point]] = defaultdict(list)
    for run in runs:
        variants = {variant["label"]: variant for variant in run.get("variants", [])}
        for summary in run.get("summaries", []):
            missing = [name for name in NEEDED if name not in summary]
            if missing:
                raise LoadtestError(f"run {run.get('run_id')} lacks {', '.join(missing)} (recorded before per-token "
                                    "timing and offered rates); run the load test again")
            variant = variants[summary["label"]]
            point = _point(run["run_id"], summary, variant)
            grouped[(point.label, point.hardware_profile)].append(point)
    return dict(grouped)


def _point(run_id: str, s: dict, variant: dict) -> Point:
    replicas = max(1, int(variant.get("replicas", 1)))
    offered, achieved = s["offered_rps"], s["achieved_rps"]
    rate = offered if s["mode"] == "rate" and offered is not None else achieved
    kept_up = s["mode"] != "rate" or offered is None or achieved >= KEPT_UP * offered
    return Point(run_id=run_id, label=s["label"], hardware_profile=variant["hardware_profile"],
                 measured_replicas=replicas, mode=s["mode"], level=s["level"], per_replica_rps=rate / replicas,
                 requests=s["requests"], errors=s["errors"], itl_gaps=s.get("itl_gaps", 0),
                 ttft_p90_ms=s["ttft_ms"].get("p90"), itl_p90_ms=s["itl_ms"].get("p90"),
                 e2e_p90_ms=s["e2e_ms"].get("p90"), prompt_tokens=s["prompt_len"].get("mean"),
                 output_tokens=s["output_len"].get("mean"), kept_up=kept_up)


def model_of(runs: list[dict]) -> str:
    models = {run.get("config", {}).get("model", "").split(":", 1)[0] for run in runs}
    if len(models) != 1:
        raise LoadtestError(f"the runs measured different models ({', '.join(sorted(models))}); plan one at a time")
    return models.pop()


def variant_quality(config_path: Path, models_dir: Path | None, model: str, labels: list[str]) -> dict[str, dict]:
    """Per variant label: perplexity increase over the base model (%) and greedy agreement, from the manifest."""
    try:
        config = load_config(config_path)
        model_config = config.model(model)
    except (ConfigError, KeyError):
        config, model_config = None, None
    folder = models_dir or Path(config.models_dir if config else "models")
    manifest = read_manifest(folder / model)
    if manifest is None:
        return {label: {"source": f"no manifest in {folder / model}"} for label in labels}
    return {label: _quality(manifest, _built(model_config, label), folder / model) for label in labels}


def _built(model_config, label: str) -> str:
    if model_config is None:
        return label
    try:
        return built_name(label, model_config.variant(label).build.method)
    except KeyError:
        return label


def _quality(manifest: ModelManifest, built: str, folder: Path) -> dict:
    variant = manifest.variants.get(built)
    if variant is None:
        return {"source": f"{built} not in {folder / 'manifest.json'}"}
    quality, base = variant.quality, manifest.variants.get(BASE_VARIANT)
    increase = quality.perplexity_delta_pct
    if increase is None and quality.perplexity and base and base.quality.perplexity:
        increase = (quality.perplexity / base.quality.perplexity - 1) * 100
    return {"ppl_increase_pct": increase, "greedy_agreement": quality.greedy_agreement,
            "perplexity": quality.perplexity, "source": f"{folder / 'manifest.json'} ({built})"}
