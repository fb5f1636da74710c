"""Block quantizers (quantize/weight_quant.py) and the GPTQ-format packing the ONNX builder reads."""

from __future__ import annotations

import numpy as np
import pytest

from quantize.blockwise import group_size_for, quantize_tensors
from quantize.gptq_format import gptq_tensors, quantization_config
from quantize.weight_quant import clip_search, hqq, rtn


def weight(rows: int = 96, columns: int = 128, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_t(4, size=(rows, columns)) * 0.02).astype(np.float32)


def unpack_rows(packed: np.ndarray, rows: int) -> np.ndarray:
    """Inverse of the packing along axis 0 (8 four-bit values per int32, lowest bits first)."""
    words = packed.view(np.uint32)
    return np.stack([(words >> (4 * j)) & 15 for j in range(8)], axis=1).reshape(rows, *words.shape[1:])


@pytest.mark.parametrize("quantizer", [rtn, clip_search, hqq])
def test_quantized_values_fit_four_bits_and_restore_the_weight(quantizer):
    w = weight()
    quantized = quantizer(w, 4, 32)
    assert quantized.q.max() <= 15 and quantized.zeros.max() <= 15
    assert quantized.scales.shape == (96, 4) and quantized.zeros.shape == (96, 4)
    relative_error = np.abs(quantized.dequantize() - w).mean() / np.abs(w).mean()
    assert relative_error < 0.15


def test_clip_search_is_never_worse_than_round_to_nearest_where_it_is_measured():
    w = weight(seed=1)
    importance = np.random.default_rng(2).gamma(1.0, 1.0, size=w.shape[1]).astype(np.float32)
    errors = {}
    for name, quantized in (("rtn", rtn(w, 4, 64)), ("clip", clip_search(w, 4, 64, importance))):
        errors[name] = float((((quantized.dequantize() - w) ** 2) * importance).sum())
    assert errors["clip"] <= errors["rtn"]


def test_group_size_must_divide_the_input_width():
    with pytest.raises(ValueError, match="does not divide"):
        rtn(weight(columns=96), 4, 64)


def test_gptq_packing_round_trips():
    w = weight()
    quantized = rtn(w, 4, 32)
    tensors = gptq_tensors("layer", quantized)
    assert tensors["layer.qweight"].shape == (128 // 8, 96) and tensors["layer.qweight"].dtype == np.int32
    assert (quantized.q == unpack_rows(tensors["layer.qweight"], 128).T).all()
    zeros = unpack_rows(tensors["layer.qzeros"].T.copy(), 96)  # stored minus one (GPTQ v1)
    assert (((zeros + 1) & 15) == quantized.zeros).all()
    assert np.allclose(tensors["layer.scales"].T, quantized.scales, rtol=1e-3)
    assert (tensors["layer.g_idx"] == np.arange(128) // 32).all()


def test_group_overrides_pick_the_first_matching_pattern():
    overrides = {r"mlp\.down_proj": 128, "lm_head": 32}
    assert group_size_for("model.layers.3.mlp.down_proj", 64, overrides) == 128
    assert group_size_for("model.layers.3.mlp.up_proj", 64, overrides) == 64
    assert group_size_for("lm_head", 64, overrides) == 32


def test_tied_lm_head_is_quantized_once_and_overrides_become_dynamic_entries():
    tensors = {"model.embed_tokens.weight": weight(256, 64), "model.norm.weight": np.ones(64, np.float32),
               "model.layers.0.mlp.down_proj.weight": weight(64, 128, seed=3),
               "model.layers.0.mlp.up_proj.weight": weight(128, 64, seed=4)}
    kept, quantized = quantize_tensors(tensors, "rtn", 4, 64, {r"down_proj": 128}, None, tied=True)
    assert set(quantized) == {"lm_head", "model.layers.0.mlp.down_proj", "model.layers.0.mlp.up_proj"}
    assert set(kept) == {"model.embed_tokens.weight", "model.norm.weight"}
    config = quantization_config(quantized, {})
    assert (config["bits"], config["group_size"], config["lm_head"]) == (4, 64, True)
    assert config["dynamic"] == {"+:^model[.]layers[.]0[.]mlp[.]down_proj[.]": {"bits": 4, "group_size": 128}}
