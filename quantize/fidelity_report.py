"""The experiments' Markdown table and the size / perplexity frontier plot, from results.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

SPEED_REFERENCE = "onnx-int4"  # today's default 4-bit variant: decode speeds are shown relative to it
SIZE_TARGET, DELTA_TARGET = 0.30, 12.0


def load_results(path: Path) -> list[dict]:
    """The last record of each candidate name, in first-seen order."""
    latest: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            latest[record["name"]] = record
    return list(latest.values())


def describe(spec: dict) -> str:
    if "onnx" in spec:
        return spec.get("how", f"built elsewhere ({Path(spec['onnx']).name})")
    skip = {"method", "calibration", "bits"}
    parts = [f"{k}={v}" for k, v in spec.items() if k not in skip and v not in ({}, None)]
    calibration = spec.get("calibration")
    if calibration and spec["method"] in ("gptq", "blockwise"):
        parts.append(f"calib={calibration['file'].removeprefix('builtin:')}:{calibration['samples']}x"
                     f"{calibration['max_tokens']}")
    return f"{spec['method']} " + ", ".join(parts)


def _delta(quality: dict) -> str:
    low, high = quality["perplexity_delta_interval_pct"]
    return f"{quality['perplexity_delta_pct']:+.1f} ({low:+.1f} to {high:+.1f})"


def render_table(results: list[dict]) -> str:
    reference = next((r["decode_tokens_per_s"] for r in results if r["name"] == SPEED_REFERENCE), None)
    lines = ["| candidate | how | size MB | × fp16 | ppl Δ% (95% CI) | agreement | build s | decode tok/s (batch 1) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(results, key=lambda r: r["x_fp16"]):
        speed = "-" if r["decode_tokens_per_s"] is None else f"{r['decode_tokens_per_s']:.1f}"
        if reference and r["decode_tokens_per_s"] is not None:
            speed += f" ({r['decode_tokens_per_s'] / reference:.2f}×)"
        build = "-" if r["build_seconds"] is None else f"{r['build_seconds']:.0f}"
        lines.append(f"| {r['name']} | {describe(r['spec'])} | {r['bytes'] / 1e6:.1f} | {r['x_fp16']:.3f} | "
                     f"{_delta(r['quality'])} | {r['quality']['greedy_agreement']:.1%} | {build} | {speed} |")
    return "\n".join(lines)


def plot_frontier(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5.5))
    shown = sorted((r for r in results if r["x_fp16"] <= 1.05), key=lambda r: r["quality"]["perplexity_delta_pct"])
    for index, r in enumerate(shown):
        quality = r["quality"]
        low, high = quality["perplexity_delta_interval_pct"]
        delta = quality["perplexity_delta_pct"]
        axes.errorbar(r["x_fp16"], delta, yerr=[[delta - low], [high - delta]], fmt="o", capsize=3)
        offset = (8, -10 if index % 2 else 6)  # alternate sides: candidates of equal size sit on one vertical
        axes.annotate(r["name"], (r["x_fp16"], delta), textcoords="offset points", xytext=offset, fontsize=7)
    axes.set_xscale("log")
    axes.axvline(SIZE_TARGET, color="grey", linestyle="--", linewidth=1)
    axes.axhline(DELTA_TARGET, color="grey", linestyle="--", linewidth=1)
    axes.set_xlabel("size ÷ fp16 (what the ONNX replica loads; log scale; fp32 at 2.0× not shown)")
    axes.set_ylabel("perplexity change against fp32, % (95 % paired bootstrap interval)")
    axes.set_title("SmolLM2-135M 4-bit candidates: size against perplexity (target: lower left of the dashes)")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def render_report(results_path: Path, plot_path: Path | None) -> str:
    results = load_results(results_path)
    if plot_path is not None:
        plot_frontier(results, plot_path)
    return render_table(results)
