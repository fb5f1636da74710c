"""Sentence-embedding encoder (all-MiniLM-L6-v2 by default) exported to ONNX, fp32 or int8.

The graph returns token embeddings; mean pooling and L2 normalisation happen in the server, as
sentence-transformers does, so the same graph serves any pooling the model card asks for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from quantize.errors import QuantizeError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def export_embedding(source_dir: Path, out_dir: Path, precision: str) -> dict:
    """Write model.onnx (+ tokenizer and pooling config) to out_dir; return build notes for the manifest."""
    import torch
    from transformers import AutoModel

    if not (source_dir / "config.json").is_file():
        raise QuantizeError(f"{source_dir} is not a Hugging Face encoder folder (no config.json)")
    model = AutoModel.from_pretrained(source_dir, dtype=torch.float32).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32_path = out_dir / "model.onnx"
    sample = {
        "input_ids": torch.ones(2, 8, dtype=torch.long),
        "attention_mask": torch.ones(2, 8, dtype=torch.long),
        "token_type_ids": torch.zeros(2, 8, dtype=torch.long),
    }
    dynamic = {name: {0: "batch", 1: "sequence"} for name in sample}
    with torch.no_grad():
        torch.onnx.export(
            _Encoder(model),
            tuple(sample.values()),
            str(fp32_path),
            input_names=list(sample),
            output_names=["last_hidden_state"],
            dynamic_axes={**dynamic, "last_hidden_state": {0: "batch", 1: "sequence"}},
            opset_version=17,
            dynamo=False,
        )
    if precision == "int8":
        _quantize_int8(fp32_path)
    for name in TOKENIZER_FILES:
        if (source_dir / name).is_file():
            shutil.copy2(source_dir / name, out_dir / name)
    pooling = _pooling_config(source_dir)
    (out_dir / "pooling.json").write_text(json.dumps(pooling, indent=2) + "\n")
    return {"hidden_size": model.config.hidden_size, "max_position_embeddings": model.config.max_position_embeddings}


def _Encoder(model):  # noqa: N802 - a factory for a torch module, named like the class it returns
    """Positional inputs, one tensor out: the shape the TorchScript exporter handles cleanly."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return outputs.last_hidden_state

    return Encoder()


def _quantize_int8(path: Path) -> None:
    """Weight-only 8-bit blocks (MatMulNBits), activations left in float.

    Dynamic int8 quantization (`quantize_dynamic`) scales activations per tensor, so a text's vector changed with
    whatever else was in its batch (padding included): the server batches requests together, so that is wrong.
    Weight-only blocks keep every row independent and were also closer to the reference (cosine 0.9999 vs 0.992).
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, bits=8)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(path)), block_size=32, is_symmetric=True, algo_config=config)
    quantizer.process()
    tmp = path.with_name("model.int8.onnx")
    quantizer.model.save_model_to_file(str(tmp), use_external_data_format=False)
    tmp.replace(path)


def _pooling_config(source_dir: Path) -> dict:
    """Pooling mode from sentence-transformers' 1_Pooling/config.json; mean pooling when absent."""
    config_path = source_dir / "1_Pooling" / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    mode = "cls" if config.get("pooling_mode_cls_token") else "mean"
    return {"mode": mode, "normalize": True, "max_tokens": 256}
