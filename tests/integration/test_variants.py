"""The embedded models' built variants (the `built_models` fixture): files match the manifest, each loads in
its real runtime and answers, and quality stays within the bounds measured for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from quantserve.manifest import ModelManifest, read_manifest, verify_files
from serving.engines.base import SamplingParams
from serving.engines.onnx_engine import OnnxEngine, OnnxEngineConfig, collect
from tests.helpers import wait_for_async

CHAT, EMBEDDING = "smollm2-135m", "minilm-l6-v2"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# Greedy answers measured: fp32, int4, GPTQ (its ONNX conversion and the checkpoint in GPTQModel) and the base
# model say "Paris"; int8 answers "L'Étoile, la Cité, ..." (96% agreement with the base, but it misses this one).
ANSWERS_PARIS = ["onnx-fp32", "onnx-int4"]
ANSWERS_SOMETHING = ["onnx-int8"]


@pytest.fixture(scope="module")
def chat_manifest(built_models: Path) -> ModelManifest:
    return read_manifest(built_models / CHAT)


@pytest.fixture(scope="module")
def embedding_manifest(built_models: Path) -> ModelManifest:
    return read_manifest(built_models / EMBEDDING)


@pytest.mark.parametrize("model", [CHAT, EMBEDDING])
def test_every_variant_matches_its_files(built_models, model):
    manifest = read_manifest(built_models / model)
    assert manifest is not None and manifest.source_sha256
    assert manifest.variants
    for name, record in manifest.variants.items():
        assert record.files, name
        assert verify_files(built_models / model / name, record) == [], name


def test_chat_manifest_describes_the_model(chat_manifest):
    assert chat_manifest.architecture == "LlamaForCausalLM"
    assert chat_manifest.parameters == pytest.approx(134.5e6, rel=0.005)
    assert {"base", "onnx-fp32", "onnx-int8", "onnx-int4", "gptq-int4"} <= set(chat_manifest.variants)


# --- each variant in its runtime ----------------------------------------------------------------------------


def greedy_answer(folder: Path) -> str:
    engine = OnnxEngine(OnnxEngineConfig(folder, max_batch_size=2, context_length=256))

    async def answer() -> str:
        output = await collect(engine.generate("capital", engine.render_chat(QUESTION),
                                               SamplingParams(max_tokens=16, temperature=0)))
        # let the batcher retire the sequence while the loop is open
        assert await wait_for_async(lambda: not engine.stats().running, 30), "the sequence was never retired"
        return output.text

    try:
        return asyncio.run(answer())
    finally:
        engine.shutdown()


def onnx_folder(built_models: Path, manifest: ModelManifest, variant: str) -> Path:
    return built_models / CHAT / variant / manifest.variants[variant].serve_paths["onnx"]


@pytest.mark.parametrize("variant", ANSWERS_PARIS)
def test_onnx_variant_answers_paris(built_models, chat_manifest, variant):
    assert "Paris" in greedy_answer(onnx_folder(built_models, chat_manifest, variant))


@pytest.mark.parametrize("variant", ANSWERS_SOMETHING)
def test_onnx_variant_answers(built_models, chat_manifest, variant):
    assert greedy_answer(onnx_folder(built_models, chat_manifest, variant)).strip()


def test_gptq_onnx_conversion_answers_paris(built_models, chat_manifest):
    folder = built_models / CHAT / "gptq-int4" / chat_manifest.variants["gptq-int4"].serve_paths["onnx"]
    assert "Paris" in greedy_answer(folder)


@pytest.mark.slow
def test_gptq_checkpoint_loads_in_gptqmodel_and_generates(built_models, chat_manifest):
    import torch

    from quantize.gptq import import_gptqmodel

    gptqmodel = import_gptqmodel()
    folder = built_models / CHAT / "gptq-int4" / chat_manifest.variants["gptq-int4"].serve_paths["vllm"]
    # The reference TORCH kernel: GPTQModel 7.3.6's default CPU kernel (TorchFusedLinear, float32) generates
    # garbage from this asymmetric, mixed-group checkpoint, while TORCH and the converted ONNX variant answer.
    model = gptqmodel.GPTQModel.load(str(folder), dtype=torch.bfloat16, backend=gptqmodel.BACKEND.TORCH)
    text = model.tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    ids = model.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    # Eager: the TORCH kernel compiles itself otherwise, which took longer here than the eight tokens.
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in model.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_base_folder_loads_in_transformers(built_models):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = built_models / CHAT / "base"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


# --- quality bounds: measured figures with a margin, so that a regression fails ---------------------------


def quality(manifest: ModelManifest, variant: str):
    return manifest.variants[variant].quality


def test_fp32_perplexity_equals_the_base_models(chat_manifest):
    base, fp32 = quality(chat_manifest, "base").perplexity, quality(chat_manifest, "onnx-fp32").perplexity
    assert fp32 == pytest.approx(base, rel=1e-3)
    assert abs(quality(chat_manifest, "onnx-fp32").perplexity_delta_pct) < 0.01


def test_quality_is_measured_on_enough_text_and_prompts_with_intervals(chat_manifest):
    base = quality(chat_manifest, "base")
    assert base.eval_tokens >= 8000 and base.agreement_prompts >= 32
    for name, record in chat_manifest.variants.items():
        if name == "base" or "onnx" not in record.serve_paths:
            continue
        measured = record.quality
        assert measured.eval_data_sha256 == base.eval_data_sha256, name
        low, high = measured.perplexity_interval
        assert low < measured.perplexity < high, name
        delta_low, delta_high = measured.perplexity_delta_interval_pct
        assert delta_low <= measured.perplexity_delta_pct <= delta_high, name


def test_int8_stays_within_one_percent_of_fp32(chat_manifest):
    int8 = quality(chat_manifest, "onnx-int8")
    # The target is the point estimate; the bootstrap interval's upper end gets a quarter point more, because the
    # evaluation runs on this CPU's ONNX Runtime kernels and moves with them: measured +0.80 % (+0.6 to +1.00) on an
    # AVX2 machine, +0.87 % (+0.66 to +1.07) on an AVX-512 (VNNI, BF16) one.
    assert int8.perplexity_delta_pct <= 1.0
    assert int8.perplexity_delta_interval_pct[1] <= 1.25
    assert int8.greedy_agreement >= 0.9  # measured 96 %


def test_default_int4_fits_the_size_target(chat_manifest):
    assert chat_manifest.variants["onnx-int4"].total_bytes <= 0.30 * 2 * chat_manifest.parameters


def test_onnx_int4_within_its_bound(chat_manifest):
    int4 = quality(chat_manifest, "onnx-int4")
    assert int4.perplexity_delta_pct <= 33  # measured +28.5 % (+26.0 to +30.9), blockwise clip search
    assert int4.greedy_agreement >= 0.66  # measured 71 %


def test_gptq_int4_within_its_bound(chat_manifest):
    gptq = quality(chat_manifest, "gptq-int4")
    assert gptq.perplexity_delta_pct <= 32  # measured +26.3 % (+24.1 to +28.6); GPTQ is not bit-for-bit repeatable
    assert gptq.greedy_agreement >= 0.65  # measured 70 %


@pytest.mark.parametrize(("variant", "bound"), [("onnx-fp32", 0.999), ("onnx-int8", 0.999)])
def test_embeddings_close_to_sentence_transformers(embedding_manifest, variant, bound):
    assert quality(embedding_manifest, variant).cosine_to_reference >= bound
