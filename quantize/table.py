"""The variant table printed by `quantserve quantize list` and `make demo`."""

from __future__ import annotations

from quantserve.manifest import ModelManifest

HEADERS = ["variant", "format", "bits", "size MB", "x fp16", "ppl", "ppl delta", "agreement", "build s"]


def fp16_bytes(manifest: ModelManifest) -> int:
    """Reference size: the parameter count at two bytes each."""
    return manifest.parameters * 2


def table_rows(manifest: ModelManifest) -> list[list[str]]:
    reference = fp16_bytes(manifest)
    base_ppl = _reference_perplexity(manifest)
    rows = []
    for name, variant in sorted(manifest.variants.items(), key=lambda item: -item[1].total_bytes):
        quality = variant.quality
        ppl = quality.perplexity
        rows.append(
            [
                name,
                variant.format,
                str(variant.bits),
                f"{variant.total_bytes / 1e6:.1f}",
                f"{variant.total_bytes / reference:.2f}" if reference else "-",
                f"{ppl:.2f}" if ppl is not None else "-",
                f"{ppl - base_ppl:+.2f}" if ppl is not None and base_ppl is not None else "-",
                _agreement(quality.greedy_agreement, quality.cosine_to_reference),
                f"{variant.build_seconds:.0f}",
            ]
        )
    return rows


def _reference_perplexity(manifest: ModelManifest) -> float | None:
    for name in ("base", "onnx-fp32"):
        if name in manifest.variants and manifest.variants[name].quality.perplexity is not None:
            return manifest.variants[name].quality.perplexity
    return None


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
