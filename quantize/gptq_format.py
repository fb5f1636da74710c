"""Write weights quantized by any method as a GPTQ-format checkpoint, which the ONNX Runtime GenAI builder
converts to MatMulNBits (and, for a quantized tied lm_head, a GatherBlockQuantized embedding sharing it).

One on-disk format for every method keeps a single conversion path: GPTQModel's output, and the calibration-free
quantizers of quantize/weight_quant.py, become ONNX the same way. Per-module group sizes and bits go into the
`dynamic` overrides that GPTQModel writes and the builder reads.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "generation_config.json")


@dataclass(frozen=True)
class QuantizedWeight:
    """A [out, in] weight as integers in [0, 2**bits) with a scale and an integer zero point per group of inputs:
    weight ≈ (q - zero) * scale."""

    q: np.ndarray  # uint8 [out, in]
    scales: np.ndarray  # float32 [out, groups]
    zeros: np.ndarray  # uint8 [out, groups]
    bits: int
    group_size: int

    def dequantize(self) -> np.ndarray:
        scales = np.repeat(self.scales, self.group_size, axis=1)[:, : self.q.shape[1]]
        zeros = np.repeat(self.zeros, self.group_size, axis=1)[:, : self.q.shape[1]].astype(np.float32)
        return (self.q.astype(np.float32) - zeros) * scales


def _pack_rows(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack along axis 0 into int32, the lowest bits holding the first value (GPTQ's layout)."""
    per_word = 32 // bits
    values = values.astype(np.uint32).reshape(values.shape[0] // per_word, per_word, *values.shape[1:])
    packed = np.zeros((values.shape[0], *values.shape[2:]), np.uint32)
    for index in range(per_word):
        packed |= values[:, index] << np.uint32(bits * index)
    return packed.view(np.int32)


def gptq_tensors(prefix: str, weight: QuantizedWeight) -> dict[str, np.ndarray]:
    """qweight [in*bits/32, out], qzeros [groups, out*bits/32] (stored minus one, GPTQ v1), fp16 scales, g_idx."""
    in_features = weight.q.shape[1]
    zeros_minus_one = (weight.zeros.astype(np.int64) - 1) & (2**weight.bits - 1)
    return {
        f"{prefix}.qweight": _pack_rows(weight.q.T, weight.bits),
        f"{prefix}.qzeros": _pack_rows(zeros_minus_one, weight.bits).T.copy(),
        f"{prefix}.scales": weight.scales.T.astype(np.float16).copy(),
        f"{prefix}.g_idx": (np.arange(in_features) // weight.group_size).astype(np.int32),
    }


def write_checkpoint(base_dir: Path, out_dir: Path, float_tensors: dict[str, np.ndarray],
                     quantized: dict[str, QuantizedWeight], notes: dict) -> None:
    """A folder the builder reads as GPTQ: base config with a quantization_config, one safetensors file."""
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = dict(float_tensors)
    for name, weight in quantized.items():
        tensors.update(gptq_tensors(name, weight))
    save_file(tensors, str(out_dir / "model.safetensors"))
    config = json.loads((base_dir / "config.json").read_text())
    config["quantization_config"] = quantization_config(quantized, notes)
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out_dir / name)


def quantization_config(quantized: dict[str, QuantizedWeight], notes: dict) -> dict:
    """The most common bits and group size globally; every module that differs as a `dynamic` override."""
    settings = [(w.bits, w.group_size) for w in quantized.values()]
    bits, group_size = max(set(settings), key=settings.count)
    # Matched with re.match against module and tensor names (`….qweight`), so no end anchor.
    dynamic = {f"+:^{name.replace('.', '[.]')}[.]": {"bits": w.bits, "group_size": w.group_size}
               for name, w in quantized.items() if (w.bits, w.group_size) != (bits, group_size)}
    return {"quant_method": "gptq", "checkpoint_format": "gptq", "bits": bits, "group_size": group_size,
            "desc_act": False, "sym": False, "lm_head": "lm_head" in quantized, "dynamic": dynamic or None,
            "quantserve": notes}


def fix_tied_embedding_shapes(onnx_path: Path, vocab_size: int) -> bool:
    """Give the lm_head's scales and zero points the 2-D shape GatherBlockQuantized needs ([vocab, blocks]).

    The builder shares a pre-quantized lm_head with the embedding but keeps MatMulNBits' flat scales, which
    GatherBlockQuantized rejects ("scales must have the same rank as data"); MatMulNBits takes either shape, and the
    bytes are the same, so only the declared dimensions change. Returns whether anything was changed.
    """
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    gathers = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
    shared = {name for node in gathers for name in node.input[2:]}
    changed = False
    for tensor in model.graph.initializer:
        if tensor.name in shared and len(tensor.dims) == 1:
            tensor.dims[:] = [vocab_size, tensor.dims[0] // vocab_size]
            changed = True
    if changed:
        onnx.save(model, str(onnx_path))
    return changed
