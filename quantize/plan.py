"""Turn `--model PATH` into a config: the local model takes the place of the config's chat model."""

from __future__ import annotations

import re
from pathlib import Path

from quantize.errors import QuantizeError
from quantserve.config import QuantserveConfig


def model_name_for(path: Path, name: str | None) -> str:
    candidate = name or re.sub(r"[^a-z0-9._-]+", "-", path.stem.lower()).strip("-.")
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,62}", candidate or ""):
        raise QuantizeError(f"cannot use {candidate!r} as a model name; pass --name with lowercase letters and digits")
    return candidate


def config_for_local_model(config: QuantserveConfig, path: Path, name: str | None) -> QuantserveConfig:
    """The same config with its (first) chat model pointing at `path`, under a new name, same variants."""
    if not path.exists():
        raise QuantizeError(f"--model {path} does not exist; give a Hugging Face model folder or a .gguf file")
    if path.is_dir() and not (path / "config.json").is_file():
        raise QuantizeError(f"--model {path} is not a Hugging Face model folder (no config.json)")
    chat = next((m for m in config.models if m.kind == "chat"), None)
    if chat is None:
        raise QuantizeError("the config has no chat model whose variants --model could reuse")
    local = chat.model_copy(update={"name": model_name_for(path, name), "source": str(path)})
    return config.model_copy(update={"models": [local]})
