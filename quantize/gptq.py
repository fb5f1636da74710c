"""GPTQ 4-bit through GPTQModel (the maintained successor of the archived AutoGPTQ).

Output: a standard GPTQ checkpoint (`gptq/`, loadable by vLLM and transformers) and its conversion to
ONNX MatMulNBits by the ONNX Runtime GenAI builder (`onnx/`), which serves it fast on CPU.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import types
from pathlib import Path

from quantize.calibration import calibration_samples, load_calibration_texts
from quantize.errors import QuantizeError
from quantserve.config import GptqBuild


@contextlib.contextmanager
def _torchvision_stand_in():
    """GPTQModel 7.3 imports torchvision for its InternVL definition only, which text models never use.

    The torchvision wheels that pip can reach are CUDA builds that break imports beside the CPU torch
    (`operator torchvision::nms does not exist`), so the project does not install torchvision. While
    gptqmodel imports, empty stand-in modules satisfy that import; they are removed right after.
    transformers is imported first so that its cached "is torchvision available" answer stays False.
    """
    if importlib.util.find_spec("torchvision") is not None:
        yield
        return
    import transformers.utils.import_utils as transformers_imports

    transformers_imports.is_torchvision_available()
    names = ["torchvision", "torchvision.transforms", "torchvision.transforms.functional"]
    stand_ins = {name: types.ModuleType(name) for name in names}
    stand_ins["torchvision.transforms.functional"].InterpolationMode = type("InterpolationMode", (), {})
    stand_ins["torchvision"].transforms = stand_ins["torchvision.transforms"]
    stand_ins["torchvision.transforms"].functional = stand_ins["torchvision.transforms.functional"]
    sys.modules.update(stand_ins)
    try:
        yield
    finally:
        for name in names:
            sys.modules.pop(name, None)


def import_gptqmodel():
    # On a 2-core host GPTQModel's loader asks for more CPU workers than it computes it has.
    os.environ.setdefault("GPTQMODEL_CPU_WORKERS", str(max(2, os.cpu_count() or 2)))
    with _torchvision_stand_in():
        import gptqmodel
    return gptqmodel


def check_group_size(spec: GptqBuild, hf_config: dict) -> None:
    widths = {hf_config.get("hidden_size"), hf_config.get("intermediate_size")} - {None}
    bad = sorted(w for w in widths if w % spec.group_size)
    if bad:
        raise QuantizeError(
            f"group_size {spec.group_size} does not divide the layer width(s) {bad}; use a divisor such as 64 or 32"
        )


def gptq_dynamic(spec: GptqBuild) -> dict[str, dict]:
    """GPTQModel's per-module overrides (`+:` = quantize with these settings) from the build's group overrides."""
    return {f"+:.*{pattern}.*": {"group_size": size} for pattern, size in spec.group_overrides.items()
            if pattern != "lm_head"}


def add_quantized_lm_head(base_dir: Path, gptq_dir: Path, out_dir: Path, spec: GptqBuild, hf_config: dict) -> Path:
    """The folder the ONNX builder converts: the GPTQ checkpoint's files (linked) plus the tied lm_head quantized
    by `spec.lm_head` in a file of its own, so that `gptq/` itself stays a standard checkpoint for vLLM."""
    from safetensors.numpy import save_file

    from quantize.blockwise import EMBEDDING, LM_HEAD, group_size_for, input_importance, load_float_tensors
    from quantize.gptq_format import gptq_tensors
    from quantize.weight_quant import QUANTIZERS

    out_dir.mkdir(parents=True)
    for item in gptq_dir.iterdir():
        (out_dir / item.name).symlink_to(item.resolve())
    tensors = load_float_tensors(base_dir)
    weight = tensors[EMBEDDING] if hf_config.get("tie_word_embeddings") else tensors["lm_head.weight"]
    group_size = group_size_for(LM_HEAD, spec.group_size, spec.group_overrides)
    if spec.lm_head == "clip_search":
        texts = load_calibration_texts(spec.calibration)
        importance = input_importance(base_dir, texts, 8192)[LM_HEAD]
        quantized = QUANTIZERS["clip_search"](weight, 4, group_size, importance)
    else:
        quantized = QUANTIZERS[spec.lm_head](weight, 4, group_size)
    save_file(gptq_tensors(LM_HEAD, quantized), str(out_dir / "lm_head.safetensors"))
    return out_dir


def quantize_gptq(base_dir: Path, out_dir: Path, spec: GptqBuild, hf_config: dict) -> dict:
    """Calibrate and save a GPTQ checkpoint in out_dir; return notes for the manifest."""
    check_group_size(spec, hf_config)
    texts = load_calibration_texts(spec.calibration)
    gptqmodel = import_gptqmodel()
    import gptqmodel.looper.loop_processor as loop_processor
    import torch

    # GPTQModel writes per-layer logs to ./logs; keep them beside the build instead of in the caller's folder.
    loop_processor._PROJECT_LOG_DIR = out_dir.parent / ".gptq-logs"
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    calibration = calibration_samples(texts, tokenizer, spec.calibration)
    config = gptqmodel.QuantizeConfig(
        bits=spec.bits, group_size=spec.group_size, desc_act=spec.desc_act, damp_percent=spec.damp_percent,
        sym=spec.sym, true_sequential=spec.true_sequential, mse=spec.mse, dynamic=gptq_dynamic(spec) or None,
    )
    print(f"  GPTQ: {len(calibration)} calibration samples, <= {spec.calibration.max_tokens} tokens each", flush=True)
    model = gptqmodel.GPTQModel.load(str(base_dir), config, dtype=torch.float32)
    model.quantize(calibration, batch_size=1)
    model.save(str(out_dir))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (base_dir / name).is_file():
            shutil.copy2(base_dir / name, out_dir / name)
    tokens = sum(len(c["input_ids"]) for c in calibration)
    return {"calibration_samples": len(calibration), "calibration_tokens": tokens}
