"""One dispatch over build methods (onnx, gptq, embedding-onnx): build a variant, and measure its quality."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from quantize.errors import QuantizeError
from quantize.source import check_causal_lm_folder
from quantserve.config import BlockwiseBuild, BuildSpec, EmbeddingOnnxBuild, GptqBuild, OnnxBuild
from quantserve.manifest import Quality


def run_method(spec: BuildSpec, base_dir: Path, source_path: Path, out: Path, cache_dir: Path, label: str) -> dict:
    """Build into `out`; return the manifest fields that depend on the method."""
    if isinstance(spec, OnnxBuild):
        from quantize.onnx_export import build_onnx

        notes = build_onnx(base_dir, out, spec, cache_dir / "builder", check_causal_lm_folder(base_dir), label)
        bits = {"fp32": 32, "int8": 8, "int4": 4}[spec.precision]
        return {"format": "onnx", "bits": bits, "backends": ["onnx"], "serve_paths": {"onnx": "."},
                "notes": json.dumps(notes)}
    if isinstance(spec, GptqBuild):
        from quantize.gptq import add_quantized_lm_head, quantize_gptq
        from quantize.onnx_export import convert_gptq_to_onnx

        hf_config = check_causal_lm_folder(base_dir)
        notes = quantize_gptq(base_dir, out / "gptq", spec, hf_config)
        onnx_input = out / "gptq"
        if spec.lm_head != "builder-rtn":
            onnx_input = add_quantized_lm_head(base_dir, out / "gptq", out / ".onnx-input", spec, hf_config)
        convert_gptq_to_onnx(base_dir, onnx_input, out / "onnx", cache_dir / "builder", hf_config, label)
        shutil.rmtree(out / ".onnx-input", ignore_errors=True)
        return {"format": "gptq", "bits": spec.bits, "backends": ["onnx", "vllm"],
                "serve_paths": {"onnx": "onnx", "vllm": "gptq"}, "notes": json.dumps(notes)}
    if isinstance(spec, BlockwiseBuild):
        from quantize.blockwise import build_blockwise
        from quantize.onnx_export import convert_gptq_to_onnx

        # The checkpoint is only the builder's input: the variant folder is the ONNX model, laid out like any
        # other ONNX variant. Beside `out`, so an interrupted build's clean-up (`.tmp-*`) removes it too.
        hf_config = check_causal_lm_folder(base_dir)
        checkpoint = out.parent / f"{out.name}-checkpoint"
        try:
            notes = build_blockwise(base_dir, checkpoint, spec, hf_config)
            convert_gptq_to_onnx(base_dir, checkpoint, out, cache_dir / "builder", hf_config, label)
        finally:
            shutil.rmtree(checkpoint, ignore_errors=True)
        return {"format": "onnx", "bits": spec.bits, "backends": ["onnx"], "serve_paths": {"onnx": "."},
                "notes": json.dumps(notes)}
    if isinstance(spec, EmbeddingOnnxBuild):
        from quantize.embedding import export_embedding

        notes = export_embedding(source_path, out, spec.precision)
        bits = {"fp32": 32, "int8": 8}[spec.precision]
        return {"format": "onnx", "bits": bits, "backends": ["onnx"], "serve_paths": {"onnx": "."},
                "notes": json.dumps(notes)}
    raise QuantizeError(f"{label}: unknown build method {spec.method!r}")


def evaluate_variant(spec: BuildSpec, onnx_dir: Path, base_dir: Path, source_path: Path, cache_dir: Path,
                     source_sha: str, label: str) -> Quality:
    """Cosine to sentence-transformers for an encoder; perplexity and greedy agreement for a causal LM."""
    from quantize import evaluate

    if isinstance(spec, EmbeddingOnnxBuild):
        return evaluate.evaluate_embedding(onnx_dir, source_path)
    reference, _ = evaluate.build_reference(base_dir, cache_dir / "reference.json", source_sha)
    return evaluate.evaluate_onnx(onnx_dir, reference, label)
