"""Variants side by side: size against fp16, quality against the base model, build time (all from the manifest),
and $ per 1M output tokens at each variant's best load level from a short load test of the running application."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from quantserve.config import QuantserveConfig
from quantserve.manifest import BASE_VARIANT, built_name, read_manifest


def short_sweep(url: str, config_path: Path, users: str, duration: str, folder: Path) -> dict:
    """`quantserve loadtest run` over every chat variant; its results.json."""
    command = [sys.executable, "-m", "quantserve.cli", "loadtest", "run", "--target", url, "--model", "smollm2-135m",
               "--variants", "all", "--users", users, "--duration", duration, "--warmup", "3s", "--max-tokens", "32",
               "--config", str(config_path), "--reports-dir", str(folder), "--run-id", "bench-sweep"]
    subprocess.run(command, check=True)
    return json.loads((folder / "bench-sweep" / "results.json").read_text())


def best_levels(sweep: dict) -> dict[str, dict]:
    """Per variant, the error-free load level with the lowest $ per 1M output tokens."""
    best: dict[str, dict] = {}
    for summary in sweep["summaries"]:
        cost = summary["usd_per_m_output_tokens"]
        if summary["errors"] or cost is None:
            continue
        current = best.get(summary["label"])
        if current is None or cost < current["usd_per_m_output_tokens"]:
            best[summary["label"]] = summary
    return best


def bench_variants(config: QuantserveConfig, sweep: dict | None) -> list[dict]:
    model = config.model("smollm2-135m")
    manifest = read_manifest(Path(config.models_dir) / model.name)
    base = manifest.variants[BASE_VARIANT]
    fp16_bytes = 2 * manifest.parameters
    best = best_levels(sweep) if sweep else {}
    rows = []
    for variant in model.variants:
        record = manifest.variants.get(built_name(variant.name, variant.build.method))
        if record is None or not variant.serve.enabled:
            continue
        dtype = variant.serve.vllm.dtype if variant.serve.backend == "vllm" else None
        size = record.total_bytes if dtype in (None, "auto", "float32") else manifest.parameters * 2
        level = best.get(variant.name)
        quality_measured = dtype in (None, "auto", "float32")  # the base record's quality is its float32 weights'
        rows.append({
            "variant": variant.name, "backend": variant.serve.backend, "size_vs_fp16": size / fp16_bytes,
            "perplexity_delta": (record.quality.perplexity - base.quality.perplexity) if quality_measured else None,
            "perplexity_delta_pct": (100 * (record.quality.perplexity / base.quality.perplexity - 1)
                                     if quality_measured else None),
            "greedy_agreement": record.quality.greedy_agreement if quality_measured else None,
            "build_seconds": record.build_seconds if variant.build.method != "base" else 0.0,
            "usd_per_m_output_tokens": level["usd_per_m_output_tokens"] if level else None,
            "best_level_users": level["level"] if level else None,
            "output_tokens_per_s": level["output_tokens_per_s"] if level else None,
        })
    return rows
