"""The variant table printed by `quantserve quantize list` and `make demo`."""

from __future__ import annotations

from quantserve.manifest import ModelManifest, Quality

HEADERS = ["variant", "format", "bits", "size MB", "x fp16", "ppl (95% CI)", "ppl Δ% (95% CI)", "agreement",
           "build s"]


def fp16_bytes(manifest: ModelManifest) -> int:
    """Reference size: the parameter count at two bytes each."""
    return manifest.parameters * 2


def table_rows(manifest: ModelManifest) -> list[list[str]]:
    reference = fp16_bytes(manifest)
    rows = []
    for name, variant in sorted(manifest.variants.items(), key=lambda item: -item[1].total_bytes):
        quality = variant.quality
        rows.append(
            [
                name,
                variant.format,
                str(variant.bits),
                f"{variant.total_bytes / 1e6:.1f}",
                f"{variant.total_bytes / reference:.3f}" if reference else "-",
                perplexity_cell(quality),
                delta_cell(quality),
                _agreement(quality.greedy_agreement, quality.cosine_to_reference),
                f"{variant.build_seconds:.0f}",
            ]
        )
    return rows


def perplexity_cell(quality: Quality) -> str:
    if quality.perplexity is None:
        return "-"
    if quality.perplexity_interval is None:
        return f"{quality.perplexity:.2f}"
    low, high = quality.perplexity_interval
    return f"{quality.perplexity:.2f} ({low:.2f}–{high:.2f})"


def delta_cell(quality: Quality) -> str:
    """Change against the base model in %, with its paired interval; '-' when not measured that way."""
    if quality.perplexity_delta_pct is None or quality.perplexity_delta_interval_pct is None:
        return "-"
    low, high = quality.perplexity_delta_interval_pct
    if low == high == quality.perplexity_delta_pct:
        return f"{quality.perplexity_delta_pct:+.1f}"
    return f"{quality.perplexity_delta_pct:+.1f} ({low:+.1f} to {high:+.1f})"


def _agreement(greedy: float | None, cosine: float | None) -> str:
    if greedy is not None:
        return f"{greedy:.0%}"
    if cosine is not None:
        return f"cos {cosine:.4f}"
    return "-"


def render_table(manifest: ModelManifest) -> str:
    """A Markdown table, readable in a terminal and pasteable into the README."""
    rows = table_rows(manifest)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(HEADERS)]
    lines = [f"{manifest.model} ({manifest.parameters / 1e6:.1f} M parameters, {manifest.architecture})", ""]
    lines.append("| " + " | ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)
