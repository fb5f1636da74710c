"""Quantize every linear weight of a causal LM (the tied lm_head/embedding included) with a block quantizer of
quantize/weight_quant.py, write a GPTQ-format checkpoint and convert it to ONNX MatMulNBits.

Group sizes can differ per module (`group_overrides`, matched against the module name), which is how a variant
fits a size budget: on SmolLM2-135M the down projections (input width 1536) take group 128 while the others
(input width 576, which 128 does not divide) keep 64.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from quantize.calibration import load_calibration_texts
from quantize.gptq_format import QuantizedWeight, write_checkpoint
from quantize.weight_quant import QUANTIZERS
from quantserve.config import BlockwiseBuild

LINEAR = re.compile(r"^model\.layers\.\d+\.(self_attn|mlp)\.[a-z_]+_proj\.weight$")
EMBEDDING, LM_HEAD = "model.embed_tokens.weight", "lm_head"


def load_float_tensors(base_dir: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    tensors = {}
    for path in sorted(base_dir.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def group_size_for(module: str, group_size: int, group_overrides: dict[str, int]) -> int:
    for pattern, size in group_overrides.items():
        if re.search(pattern, module):
            return size
    return group_size


def input_importance(base_dir: Path, texts: list[str], max_tokens: int) -> dict[str, np.ndarray]:
    """Mean squared input per input channel of every linear layer (and the lm_head) over calibration text."""
    import torch  # heavy: only the activation-weighted quantizers need it
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"][:max_tokens]
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def record(_module, inputs, _output):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).float()
            sums[name] = sums.get(name, 0) + (x * x).sum(dim=0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for start in range(0, len(ids), 512):
            model(torch.tensor([ids[start : start + 512]]))
    for handle in handles:
        handle.remove()
    return {name: (sums[name] / counts[name]).numpy() for name in sums}


def quantize_tensors(tensors: dict[str, np.ndarray], algorithm: str, bits: int, group_size: int,
                     group_overrides: dict[str, int], importance: dict[str, np.ndarray] | None,
                     tied: bool) -> tuple[dict[str, np.ndarray], dict[str, QuantizedWeight]]:
    """(tensors kept in float, quantized modules by module name)."""
    quantizer = QUANTIZERS[algorithm]
    kept, quantized = {}, {}
    head_weight = tensors[EMBEDDING] if tied else tensors.get("lm_head.weight")
    for name, tensor in tensors.items():
        if LINEAR.match(name):
            module = name.removesuffix(".weight")
            quantized[module] = _quantize_one(quantizer, tensor, bits,
                                              group_size_for(module, group_size, group_overrides),
                                              importance.get(module) if importance else None)
        elif name != "lm_head.weight":
            kept[name] = tensor
    if head_weight is not None:
        quantized[LM_HEAD] = _quantize_one(quantizer, head_weight, bits,
                                           group_size_for(LM_HEAD, group_size, group_overrides),
                                           importance.get(LM_HEAD) if importance else None)
    return kept, quantized


def _quantize_one(quantizer, weight: np.ndarray, bits: int, group_size: int,
                  importance: np.ndarray | None) -> QuantizedWeight:
    if importance is not None and quantizer.__name__ == "clip_search":
        return quantizer(weight, bits, group_size, importance)
    return quantizer(weight, bits, group_size)


def build_blockwise(base_dir: Path, out_dir: Path, spec: BlockwiseBuild, hf_config: dict) -> dict:
    """Quantize (activation-weighted when asked) and write the GPTQ-format checkpoint; notes for the manifest."""
    importance = None
    if spec.activation_weighted and spec.algorithm == "clip_search":
        texts = load_calibration_texts(spec.calibration)
        importance = input_importance(base_dir, texts, spec.calibration.samples * spec.calibration.max_tokens)
    tied = bool(hf_config.get("tie_word_embeddings", False))
    kept, quantized = quantize_tensors(load_float_tensors(base_dir), spec.algorithm, spec.bits, spec.group_size,
                                       spec.group_overrides, importance, tied)
    notes = {"algorithm": spec.algorithm, "activation_weighted": importance is not None,
             "quantized_modules": len(quantized)}
    write_checkpoint(base_dir, out_dir, kept, quantized, notes)
    return notes
