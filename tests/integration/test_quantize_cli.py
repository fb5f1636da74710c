"""`quantserve quantize build|eval|list` through the real CLI (a subprocess) on a tiny random Llama, so that
building, skipping, rebuilding, interrupting and every bad input take seconds, not minutes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest
import yaml

from quantserve.manifest import read_manifest, verify_files
from tests.helpers import QUANTSERVE, REPO, run_quantserve, wait_for

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# The RTN int4 variant: the CLI's mechanics are the same for every method, and the default onnx-int4's clip search
# takes minutes even on a tiny model (the real build of it is the integration tier's built_models).
INT4 = "onnx-int4-rtn"
HQQ = {"name": "onnx-int4-hqq", "build": {"method": "onnx", "precision": "int4", "algorithm": "hqq"}}  # an option
TINY_VARIANTS = ["onnx-fp32", INT4, HQQ["name"]]


def tiny_llama(folder: Path, tokenizer_dir: Path) -> Path:
    """A randomly initialised 2-layer Llama with the embedded model's vocabulary and tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=49152, tie_word_embeddings=True,
                         max_position_embeddings=2048, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy2(tokenizer_dir / name, folder / name)
    return folder


def write_config(path: Path, models_dir: Path, **gptq_calibration: str) -> Path:
    """quantserve.yaml with models_dir moved to `models_dir` (and gptq-int4's calibration changed if asked)."""
    config = yaml.safe_load((REPO / "quantserve.yaml").read_text())
    config["models_dir"] = str(models_dir)
    for variant in config["models"][0]["variants"]:
        if variant["build"]["method"] == "gptq":
            variant["build"]["calibration"].update(gptq_calibration)
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, built_models: Path) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny", built_models / "smollm2-135m" / "base")


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-build")
    path = write_config(folder / "quantserve.yaml", folder / "models")
    config = yaml.safe_load(path.read_text())
    config["models"][0]["variants"].append(HQQ)
    path.write_text(yaml.safe_dump(config))
    return path


def build(config: Path, model: Path, *args: str) -> subprocess.CompletedProcess:
    return run_quantserve("quantize", "build", "--config", str(config), "--model", str(model), "--name", "tiny",
                          *args, timeout=300)


def models_dir(config: Path) -> Path:
    return Path(yaml.safe_load(config.read_text())["models_dir"])


@pytest.fixture(scope="module")
def first_build(tiny_config: Path, tiny_model: Path) -> subprocess.CompletedProcess:
    return build(tiny_config, tiny_model, "--variants", ",".join(TINY_VARIANTS))


def tiny_manifest(config: Path):
    manifest = read_manifest(models_dir(config) / "tiny")
    assert manifest is not None
    return manifest


def assert_listed_variants_verify(model_dir: Path) -> None:
    manifest = read_manifest(model_dir)
    assert manifest is not None
    for name, record in manifest.variants.items():
        assert verify_files(model_dir / name, record) == [], name


def table_row(table: str, variant: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {variant} "))


@pytest.mark.slow
def test_build_writes_variants_table_and_a_verified_manifest(first_build, tiny_config):
    assert first_build.returncode == 0, first_build.stderr[-3000:]
    for name in TINY_VARIANTS:
        assert "| onnx " in table_row(first_build.stdout, name)
    manifest = tiny_manifest(tiny_config)
    assert manifest.architecture == "LlamaForCausalLM" and manifest.source_sha256
    assert set(TINY_VARIANTS) <= set(manifest.variants)
    assert_listed_variants_verify(models_dir(tiny_config) / "tiny")
    for name in TINY_VARIANTS:
        record = manifest.variants[name]
        assert record.files and record.input_hash and record.built_at and record.build_seconds > 0
        assert {"onnxruntime", "onnxruntime-genai", "transformers", "torch"} <= set(record.library_versions)
        assert record.quality.perplexity > 1 and 0 <= record.quality.greedy_agreement <= 1


def test_fp32_variant_has_the_base_models_perplexity(first_build, tiny_config):
    variants = tiny_manifest(tiny_config).variants
    assert variants["onnx-fp32"].quality.perplexity == pytest.approx(variants["base"].quality.perplexity, rel=1e-3)


def test_rebuild_with_unchanged_inputs_skips_every_variant(first_build, tiny_config, tiny_model):
    before = tiny_manifest(tiny_config)
    again = build(tiny_config, tiny_model, "--variants", ",".join(TINY_VARIANTS))
    assert again.returncode == 0, again.stderr[-3000:]
    for name in TINY_VARIANTS:
        assert f"tiny:{name}: up to date" in again.stdout
        assert tiny_manifest(tiny_config).variants[name].built_at == before.variants[name].built_at


@pytest.mark.slow
def test_force_rebuilds(first_build, tiny_config, tiny_model):
    before = tiny_manifest(tiny_config).variants[INT4]
    forced = build(tiny_config, tiny_model, "--variants", INT4, "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert "up to date" not in forced.stdout
    after = tiny_manifest(tiny_config).variants[INT4]
    assert after.built_at != before.built_at and after.input_hash == before.input_hash
    assert_listed_variants_verify(models_dir(tiny_config) / "tiny")


def test_list_prints_the_table(first_build, tiny_config, tiny_model):
    listed = run_quantserve("quantize", "list", "--config", str(tiny_config), "--model", str(tiny_model),
                            "--name", "tiny")
    assert listed.returncode == 0, listed.stderr
    assert "| variant " in listed.stdout
    for name in ["base", *TINY_VARIANTS]:
        assert table_row(listed.stdout, name)


def test_eval_recomputes_quality(first_build, tiny_config, tiny_model):
    path = models_dir(tiny_config) / "tiny" / "manifest.json"
    raw = json.loads(path.read_text())
    measured = raw["variants"][INT4]["quality"]
    raw["variants"][INT4]["quality"] = {"perplexity": 1.0, "greedy_agreement": 0.0}
    path.write_text(json.dumps(raw))
    evaluated = run_quantserve("quantize", "eval", "--config", str(tiny_config), "--model", str(tiny_model),
                               "--name", "tiny", "--variants", INT4)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    quality = tiny_manifest(tiny_config).variants[INT4].quality
    assert quality.perplexity == pytest.approx(measured["perplexity"], rel=1e-6)
    assert quality.greedy_agreement == measured["greedy_agreement"]
    assert table_row(evaluated.stdout, INT4)


@pytest.mark.slow
def test_killed_build_leaves_a_consistent_manifest_and_the_next_build_cleans_up(
    first_build, tiny_config, tiny_model, tmp_path
):
    model_dir = models_dir(tiny_config) / "tiny"
    command = [*QUANTSERVE, "quantize", "build", "--config", str(tiny_config), "--model", str(tiny_model),
               "--name", "tiny", "--variants", "onnx-fp32", "--force"]
    with (tmp_path / "build.log").open("w") as log:
        process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for(lambda: exporter_running(process) or process.poll() is not None, timeout=120)
        assert process.poll() is None, (tmp_path / "build.log").read_text()[-3000:]
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the CLI and its exporter subprocess, as a terminal's kill would
        process.wait()
    assert any(model_dir.glob(".tmp-onnx-fp32-*"))
    assert_listed_variants_verify(model_dir)
    resumed = build(tiny_config, tiny_model, "--variants", "onnx-fp32")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [p.name for p in model_dir.iterdir() if ".tmp-" in p.name or ".old-" in p.name] == []
    assert "onnx-fp32" in tiny_manifest(tiny_config).variants
    assert_listed_variants_verify(model_dir)


def exporter_running(cli: subprocess.Popen) -> bool:
    """Whether the CLI's ONNX builder subprocess runs (the variant is then being written)."""
    with contextlib.suppress(psutil.Error):
        children = psutil.Process(cli.pid).children(recursive=True)
        return any("onnxruntime_genai.models.builder" in child.cmdline() for child in children)
    return False


# --- bad input: one line on stderr, a non-zero exit, nothing written -------------------------------------


def assert_user_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quantserve: error:"), result.stderr[-3000:]
    for word in words:
        assert word in lines[0]
    return lines[0]


def assert_nothing_written(folder: Path) -> None:
    """No file under folder but the (empty) lock file a build takes."""
    files = folder.rglob("*") if folder.exists() else []
    assert [str(p.relative_to(folder)) for p in files if p.is_file() and p.name != ".build.lock"] == []


def bad_build(tmp_path: Path, model: Path | str, *args: str, **calibration: str) -> subprocess.CompletedProcess:
    config = write_config(tmp_path / "quantserve.yaml", tmp_path / "models", **calibration)
    return run_quantserve("quantize", "build", "--config", str(config), "--model", str(model), *args)


def test_missing_model_path(tmp_path):
    result = bad_build(tmp_path, tmp_path / "no-such-model")
    assert_user_error(result, "does not exist")
    assert_nothing_written(tmp_path / "models")


def test_folder_without_config_json(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "readme.txt").write_text("hello")
    assert_user_error(bad_build(tmp_path, tmp_path / "not-a-model"), "config.json")
    assert_nothing_written(tmp_path / "models")


def test_unsupported_architecture(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    assert_user_error(bad_build(tmp_path, folder), "unsupported architecture", "bert")
    assert_nothing_written(tmp_path / "models")


def test_unknown_variant(tmp_path, tiny_model):
    assert_user_error(bad_build(tmp_path, tiny_model, "--variants", "nope"), "nope", "onnx-fp32")
    assert_nothing_written(tmp_path / "models")


def _empty(path: Path) -> None:
    path.write_text("\n\n  \n")


def _directory(path: Path) -> None:
    path.mkdir()


def _not_utf8(path: Path) -> None:
    path.write_bytes(b"\xff\xfe\xfa calibration \xc3\x28")


@pytest.mark.parametrize("make_file", [_empty, _directory, _not_utf8], ids=["empty", "directory", "not-utf8"])
def test_bad_calibration_file_fails_before_any_work(tmp_path, tiny_model, make_file):
    calibration = tmp_path / "calibration.txt"
    make_file(calibration)
    result = bad_build(tmp_path, tiny_model, "--variants", "gptq-int4", file=str(calibration))
    assert_user_error(result, "calibration file", str(calibration))
    assert "building" not in result.stdout
    assert_nothing_written(tmp_path / "models")


def test_models_dir_that_cannot_be_written(tmp_path, tiny_model):
    (tmp_path / "somefile").write_text("not a folder")
    config = write_config(tmp_path / "quantserve.yaml", tmp_path / "somefile" / "models")
    result = run_quantserve("quantize", "build", "--config", str(config), "--model", str(tiny_model))
    assert_user_error(result, "not writable", "models_dir")
    assert (tmp_path / "somefile").read_text() == "not a folder"


def _config_with(tmp_path: Path, change) -> Path:
    config = yaml.safe_load((REPO / "quantserve.yaml").read_text())
    config["models_dir"] = str(tmp_path / "models")
    change(config)
    path = tmp_path / "quantserve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _block_size_48(config: dict) -> None:
    rtn = next(v for v in config["models"][0]["variants"] if v["name"] == "onnx-int4-rtn")
    rtn["build"]["block_size"] = 48


def _unknown_key(config: dict) -> None:
    config["models"][0]["variants"][0]["build"]["colour"] = "red"


@pytest.mark.parametrize(("change", "words"), [(_block_size_48, ["block_size", "power of two"]),
                                               (_unknown_key, ["colour"])], ids=["block-size-48", "unknown-key"])
def test_invalid_config_names_the_field(tmp_path, change, words):
    config = _config_with(tmp_path, change)
    assert_user_error(run_quantserve("quantize", "build", "--config", str(config)), str(config), *words)
    assert_nothing_written(tmp_path / "models")


def test_missing_config_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    assert_user_error(run_quantserve("quantize", "list", "--config", str(missing)), str(missing), "not found")


def test_hqq_int4_is_an_option_that_builds_matmulnbits_and_generates(first_build, tiny_config):
    import onnx

    from serving.engines.base import SamplingParams
    from serving.engines.onnx_engine import OnnxEngine, OnnxEngineConfig, collect

    assert first_build.returncode == 0, first_build.stderr[-2000:]
    folder = models_dir(tiny_config) / "tiny" / HQQ["name"]
    record = read_manifest(folder.parent).variants[HQQ["name"]]
    assert record.bits == 4 and record.params["algorithm"] == "hqq" and not verify_files(folder, record)
    assert not (folder / ".fp32").exists()
    ops = {node.op_type for node in onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.node}
    assert "MatMulNBits" in ops
    engine = OnnxEngine(OnnxEngineConfig(folder, max_batch_size=1, context_length=128))
    try:
        output = asyncio.run(collect(engine.generate("hqq", "Hello", SamplingParams(max_tokens=5, temperature=0))))
    finally:
        engine.shutdown()
    assert output.completion_tokens >= 1
