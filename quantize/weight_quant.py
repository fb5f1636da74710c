"""Calibration-free (or activation-weighted) block quantizers for one weight matrix, into `QuantizedWeight`.

- `rtn`: asymmetric min/max round-to-nearest per group.
- `clip_search`: for each group, the shrunken min/max range (of a grid) whose rounding error, weighted by how
  large the matching inputs are (mean x² per input channel, when given), is smallest. llama.cpp's k-quants and
  AWQ's clipping search use the same idea.
- `hqq`: half-quadratic optimisation of the zero point (Badri & Shaji, 2023, as in ONNX Runtime's quantizer),
  with the zero point rounded to an integer so that the GPTQ format and GatherBlockQuantized can hold it.
"""

from __future__ import annotations

import numpy as np

from quantize.gptq_format import QuantizedWeight

SHRINK_GRID = np.linspace(1.0, 0.7, 16)


def _groups(weight: np.ndarray, group_size: int) -> np.ndarray:
    out_features, in_features = weight.shape
    if in_features % group_size:
        raise ValueError(f"group size {group_size} does not divide the input width {in_features}")
    return weight.astype(np.float32).reshape(out_features, in_features // group_size, group_size)


def _range_to_params(low: np.ndarray, high: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    levels = 2**bits - 1
    low, high = np.minimum(low, 0), np.maximum(high, 0)  # keep 0 representable
    scale = np.maximum(high - low, 1e-8) / levels
    zero = np.clip(np.round(-low / scale), 0, levels)
    return scale, zero


def _quantize(groups: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(np.round(groups / scale[..., None] + zero[..., None]), 0, 2**bits - 1)


def _result(groups: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int, group_size: int) -> QuantizedWeight:
    q = _quantize(groups, scale, zero, bits).astype(np.uint8).reshape(groups.shape[0], -1)
    return QuantizedWeight(q=q, scales=scale.astype(np.float32), zeros=zero.astype(np.uint8), bits=bits,
                           group_size=group_size)


def rtn(weight: np.ndarray, bits: int, group_size: int) -> QuantizedWeight:
    groups = _groups(weight, group_size)
    scale, zero = _range_to_params(groups.min(axis=-1), groups.max(axis=-1), bits)
    return _result(groups, scale, zero, bits, group_size)


def clip_search(weight: np.ndarray, bits: int, group_size: int,
                importance: np.ndarray | None = None) -> QuantizedWeight:
    """`importance`: mean squared input per input channel ([in]); uniform when None."""
    groups = _groups(weight, group_size)
    weights = np.ones(groups.shape[1:], np.float32) if importance is None else \
        importance.astype(np.float32).reshape(groups.shape[1:])
    low, high = groups.min(axis=-1), groups.max(axis=-1)
    best_error = np.full(groups.shape[:2], np.inf, np.float32)
    best_scale, best_zero = np.zeros_like(best_error), np.zeros_like(best_error)
    for shrink in SHRINK_GRID:
        scale, zero = _range_to_params(low * shrink, high * shrink, bits)
        restored = (_quantize(groups, scale, zero, bits) - zero[..., None]) * scale[..., None]
        error = (((restored - groups) ** 2) * weights).sum(axis=-1)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best_scale, best_zero = np.where(better, scale, best_scale), np.where(better, zero, best_zero)
    return _result(groups, best_scale, best_zero, bits, group_size)


def hqq(weight: np.ndarray, bits: int, group_size: int, iterations: int = 20) -> QuantizedWeight:
    """Proximal updates of the zero point under an l_p<1 error (robust to outliers), then one rounding."""
    groups = _groups(weight, group_size)
    levels = 2**bits - 1
    low, high = groups.min(axis=-1, keepdims=True), groups.max(axis=-1, keepdims=True)
    inverse_scale = levels / np.maximum(high - low, 1e-8)
    zero = np.round(-low * inverse_scale)
    beta, best_error = 10.0, np.inf
    for _ in range(iterations):
        q = np.clip(np.round(groups * inverse_scale + zero), 0, levels)
        restored = (q - zero) / inverse_scale
        residual = groups - restored
        shrunk = np.sign(residual) * np.maximum(np.abs(residual) - np.power(np.abs(residual) + 1e-8, -0.3) / beta, 0)
        zero = np.mean(q - (groups - shrunk) * inverse_scale, axis=-1, keepdims=True)
        beta *= 1.01
        error = float(np.abs(residual).mean())
        if error >= best_error:
            break
        best_error = error
    zero = np.clip(np.round(zero), 0, levels)
    return _result(groups, (1 / inverse_scale)[..., 0], zero[..., 0], bits, group_size)


QUANTIZERS = {"rtn": rtn, "clip_search": clip_search, "hqq": hqq}
