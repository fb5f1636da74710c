"""Calibration text: the paragraphs of a calibration file, and token windows cut from them."""

from __future__ import annotations

from pathlib import Path

from quantize.errors import QuantizeError
from quantserve.config import CalibrationSpec

DATA_DIR = Path(__file__).parent / "data"


def load_calibration_texts(spec: CalibrationSpec) -> list[str]:
    """Paragraphs of the calibration file (blank-line separated)."""
    path = DATA_DIR / spec.file.removeprefix("builtin:") if spec.file.startswith("builtin:") else Path(spec.file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise QuantizeError(f"cannot read calibration file {path}: {exc.__class__.__name__}") from None
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    if not paragraphs:
        raise QuantizeError(f"calibration file {path} is empty; give it text paragraphs separated by blank lines")
    return paragraphs


def calibration_samples(paragraphs: list[str], tokenizer, spec: CalibrationSpec) -> list[dict]:
    """`samples` windows of `max_tokens` tokens spread evenly over the text (its paragraphs joined in order).

    Windows overlap only when the text is shorter than samples x max_tokens; identical windows are dropped.
    """
    stream = [t for p in paragraphs for t in tokenizer(p + "\n\n", add_special_tokens=False)["input_ids"]]
    span = max(len(stream) - spec.max_tokens, 0)
    starts = sorted({round(i * span / max(spec.samples - 1, 1)) for i in range(spec.samples)})
    windows = [stream[start : start + spec.max_tokens] for start in starts]
    return [{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in windows]
