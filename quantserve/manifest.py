"""`models/<name>/manifest.json`: what was built, from what, how, and how good it is.

Serving and load tests read the same records. Every write goes to a temp file that is renamed into place,
so a reader never sees a half-written manifest and an interrupted build never lists a missing variant.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

MANIFEST_NAME = "manifest.json"
BASE_VARIANT = "base"  # the Hugging Face folder every variant is built from, recorded as a variant of its own


class FileRecord(BaseModel):
    path: str = Field(description="Relative to the variant folder")
    bytes: int
    sha256: str


class Quality(BaseModel):
    """How close a variant is to the base model, measured on `eval_data_sha256`'s held-out text and prompts."""

    perplexity: float | None = Field(None, description="On quantize/data/heldout.txt, 512-token windows")
    perplexity_interval: tuple[float, float] | None = Field(
        None, description="95 % bootstrap interval of the perplexity, resampling 128-token blocks")
    perplexity_delta_pct: float | None = Field(None, description="Perplexity change against the base model, in %")
    perplexity_delta_interval_pct: tuple[float, float] | None = Field(
        None, description="95 % paired bootstrap interval of that change (same blocks for variant and base)")
    block_nll: list[float] | None = Field(
        None, description="Summed loss of each 128-token block, so that later comparisons can be paired")
    eval_tokens: int | None = None
    eval_data_sha256: str | None = Field(None, description="Hash of the held-out text and prompts measured on")
    greedy_agreement: float | None = Field(None, description="Share of greedy tokens equal to the base model's")
    agreement_prompts: int | None = Field(None, description="Prompts the greedy agreement is measured over")
    cosine_to_reference: float | None = Field(None, description="Embeddings: mean cosine to the PyTorch model")


class VariantManifest(BaseModel):
    name: str
    format: Literal["hf", "onnx", "gptq"]
    bits: int
    backends: list[str] = Field(description="Backends that can serve this variant")
    serve_paths: dict[str, str] = Field(description="Backend -> folder it loads, relative to the variant folder")
    params: dict = Field(default_factory=dict, description="The build spec from the config")
    input_hash: str = Field(description="Hash of source model, build spec and code version: unchanged means skip")
    files: list[FileRecord]
    total_bytes: int
    library_versions: dict[str, str] = Field(default_factory=dict)
    build_seconds: float
    built_at: str
    quality: Quality = Quality()
    notes: str = ""


class ModelManifest(BaseModel):
    model: str
    kind: Literal["chat", "embedding"]
    source: str
    source_sha256: str
    architecture: str = ""
    parameters: int = 0
    context_length: int = 0
    variants: dict[str, VariantManifest] = Field(default_factory=dict)


def built_name(variant_name: str, build_method: str) -> str:
    """The folder and manifest key holding a configured variant's files: the base folder for `method: base`."""
    return BASE_VARIANT if build_method == "base" else variant_name


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_records(folder: Path) -> list[FileRecord]:
    records = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = str(path.relative_to(folder))
        records.append(FileRecord(path=relative, bytes=path.stat().st_size, sha256=sha256_file(path)))
    return records


def atomic_write_text(path: Path, text: str) -> None:
    """Write next to the target, fsync, then rename: the file is either the old or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_manifest(model_dir: Path) -> ModelManifest | None:
    path = model_dir / MANIFEST_NAME
    if not path.exists():
        return None
    return ModelManifest.model_validate_json(path.read_text())


def write_manifest(model_dir: Path, manifest: ModelManifest) -> None:
    atomic_write_text(model_dir / MANIFEST_NAME, manifest.model_dump_json(indent=2) + "\n")


def verify_files(variant_dir: Path, variant: VariantManifest) -> list[str]:
    """Problems found when checking a built variant against its manifest record (empty when all is well)."""
    problems = []
    for record in variant.files:
        path = variant_dir / record.path
        if not path.is_file():
            problems.append(f"{record.path}: missing")
        elif path.stat().st_size != record.bytes or sha256_file(path) != record.sha256:
            problems.append(f"{record.path}: size or sha256 differs from the manifest")
    return problems


def json_hash(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
