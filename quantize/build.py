"""Build a model's variants into `models/<name>/<variant>/` and record them in the manifest.

Each variant is built into a temp folder beside its final place, evaluated there, then swapped in:
the manifest drops the old record, the old folder is moved aside, the new one renamed into place, and
only then is the new record written. An interrupted build (Ctrl-C, kill, full disk) therefore never
leaves a variant listed whose files are incomplete; leftovers are removed by the next run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import time
from importlib import metadata
from pathlib import Path

from quantize.calibration import load_calibration_texts
from quantize.errors import QuantizeError
from quantize.evaluate import build_reference, eval_data_hash
from quantize.methods import evaluate_variant, run_method
from quantize.source import (
    check_causal_lm_folder,
    copy_base_folder,
    materialize_base,
    resolve_source,
    source_fingerprint,
)
from quantserve.config import BlockwiseBuild, GptqBuild, ModelConfig, QuantserveConfig, VariantConfig
from quantserve.manifest import (
    BASE_VARIANT,
    ModelManifest,
    VariantManifest,
    file_records,
    json_hash,
    read_manifest,
    utc_now,
    verify_files,
    write_manifest,
)

# Bump a method's number when its output changes for the same inputs, so cached variants are rebuilt.
BUILD_CODE_VERSIONS = {"base": 1, "onnx": 2, "gptq": 3, "blockwise": 2, "embedding-onnx": 2}
TRACKED_LIBRARIES = ("onnxruntime", "onnxruntime-genai", "gptqmodel", "transformers", "torch", "onnx")


def library_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def model_dir_for(config: QuantserveConfig, model: ModelConfig) -> Path:
    return Path(config.models_dir) / model.name


def ensure_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise QuantizeError(
            f"output folder {folder} is not writable ({exc.strerror}); set models_dir in the config"
        ) from None


def clean_leftovers(model_dir: Path) -> None:
    """Remove temp and moved-aside folders of builds that were interrupted."""
    for leftover in model_dir.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    for leftover in model_dir.glob(".old-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def select_variants(model: ModelConfig, names: str) -> list[VariantConfig]:
    """`all`: every variant the config serves (`serve.enabled`); others are built only when named."""
    if names == "all":
        return [v for v in model.variants if v.serve.enabled]
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = [v.name for v in model.variants]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise QuantizeError(f"unknown variant {', '.join(unknown)} for {model.name}; known: {', '.join(known)}")
    return [model.variant(n) for n in wanted]


class ModelBuild:
    """The state of one model's build: its folders, source and manifest."""

    def __init__(self, config: QuantserveConfig, model: ModelConfig) -> None:
        self.model = model
        self.dir = model_dir_for(config, model)
        ensure_writable(self.dir)
        clean_leftovers(self.dir)
        self.source_path = resolve_source(model.source)
        self.source_sha = source_fingerprint(self.source_path)
        self.manifest = read_manifest(self.dir) or ModelManifest(
            model=model.name, kind=model.kind, source=model.source, source_sha256=self.source_sha
        )
        if self.manifest.source_sha256 != self.source_sha:  # a new source: every old variant is stale
            self.manifest = ModelManifest(model=model.name, kind=model.kind, source=model.source,
                                          source_sha256=self.source_sha)
        self.versions = library_versions()

    @property
    def cache_dir(self) -> Path:
        return self.dir / ".cache"

    def input_hash(self, variant: VariantConfig) -> str:
        return json_hash({"source": self.source_sha, "build": variant.build.model_dump(),
                          "code": BUILD_CODE_VERSIONS[variant.build.method], "libraries": self.versions})

    def is_current(self, variant: VariantConfig) -> bool:
        record = self.manifest.variants.get(variant.name)
        if record is None or record.input_hash != self.input_hash(variant):
            return False
        return not verify_files(self.dir / variant.name, record)

    def install(self, name: str, built: Path, record: VariantManifest) -> None:
        """Swap a finished temp folder into place; see the module docstring for the order."""
        final, aside = self.dir / name, self.dir / f".old-{name}"
        if name in self.manifest.variants:
            self.manifest.variants.pop(name)
            write_manifest(self.dir, self.manifest)
        if final.exists():
            final.rename(aside)
        built.rename(final)
        self.manifest.variants[name] = record
        write_manifest(self.dir, self.manifest)
        shutil.rmtree(aside, ignore_errors=True)


def prepare_base(config: QuantserveConfig, model: ModelConfig) -> Path:
    """The Hugging Face folder every variant of a chat model is built from (`quantserve quantize base`)."""
    with build_lock(model_dir_for(config, model)):
        clean_leftovers(model_dir_for(config, model))
        return _prepare_base(config, model)


def _prepare_base(config: QuantserveConfig, model: ModelConfig) -> Path:
    if model.kind == "embedding":
        return resolve_source(model.source)
    model_dir = model_dir_for(config, model)
    print(f"{model.name}: preparing the base model from {model.source}", flush=True)
    base_dir = materialize_base(model.source, model_dir / BASE_VARIANT, model_dir)
    check_causal_lm_folder(base_dir)
    if base_dir != model_dir / BASE_VARIANT:
        base_dir = copy_base_folder(base_dir, model_dir, BASE_VARIANT)
    return base_dir


def check_inputs(model: ModelConfig, variants: list[VariantConfig]) -> None:
    """Errors the user can fix, raised before any folder or manifest is written and before any slow step."""
    source = resolve_source(model.source)
    if model.kind == "chat" and source.is_dir():
        check_causal_lm_folder(source)
    for variant in variants:
        if isinstance(variant.build, GptqBuild | BlockwiseBuild):
            load_calibration_texts(variant.build.calibration)


@contextlib.contextmanager
def build_lock(model_dir: Path):
    """One build of a model at a time (a second waits): builds clean each other's temp folders otherwise."""
    ensure_writable(model_dir)
    with (model_dir / ".build.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{model_dir}: another build is running; waiting for it", flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build_model(config: QuantserveConfig, model: ModelConfig, variant_names: str = "all",
                force: bool = False) -> ModelManifest:
    variants = select_variants(model, variant_names)
    check_inputs(model, variants)
    with build_lock(model_dir_for(config, model)):
        return _build_model(config, model, variants, force)


def _build_model(config: QuantserveConfig, model: ModelConfig, variants: list[VariantConfig],
                 force: bool) -> ModelManifest:
    state = ModelBuild(config, model)
    base_dir = _prepare_base(config, model)
    if model.kind == "chat":
        _describe_chat_model(state, base_dir)
    else:
        _describe_encoder(state, base_dir)
    for variant in variants:
        if variant.build.method == "base":
            print(f"{model.name}:{variant.name}: served from the base folder ({BASE_VARIANT}/)", flush=True)
            continue
        if not force and state.is_current(variant):
            if _quality_is_current(state, variant.name):
                print(f"{model.name}:{variant.name}: up to date (inputs unchanged), skipped", flush=True)
            else:
                print(f"{model.name}:{variant.name}: built, but measured on other evaluation data: evaluating",
                      flush=True)
                _reevaluate(state, base_dir, variant)
            continue
        _build_variant(state, base_dir, variant)
    return state.manifest


def _quality_is_current(state: ModelBuild, name: str) -> bool:
    """Chat variants' figures are comparable only when measured on the current held-out text and prompts."""
    return state.model.kind != "chat" or state.manifest.variants[name].quality.eval_data_sha256 == eval_data_hash()


def _describe_chat_model(state: ModelBuild, base_dir: Path) -> None:
    """Architecture facts, and the base model itself as a variant (what vLLM serves unquantized)."""
    hf_config = check_causal_lm_folder(base_dir)
    manifest = state.manifest
    manifest.architecture = (hf_config.get("architectures") or [hf_config["model_type"]])[0]
    manifest.context_length = int(hf_config.get("max_position_embeddings", 0))
    manifest.parameters = _parameter_count(base_dir)
    base_hash = json_hash({"source": state.source_sha, "code": BUILD_CODE_VERSIONS["base"]})
    current = manifest.variants.get(BASE_VARIANT)
    if current is not None and current.input_hash == base_hash:
        if current.quality.eval_data_sha256 != eval_data_hash():
            _, quality = build_reference(base_dir, state.cache_dir / "reference.json", state.source_sha)
            manifest.variants[BASE_VARIANT] = current.model_copy(update={"quality": quality})
            write_manifest(state.dir, manifest)
        return
    started = time.monotonic()
    _, quality = build_reference(base_dir, state.cache_dir / "reference.json", state.source_sha)
    manifest.variants[BASE_VARIANT] = VariantManifest(
        name=BASE_VARIANT, format="hf", bits=32, backends=["vllm"], serve_paths={"vllm": "."},
        params={"dtype": "float32", "from": state.model.source}, input_hash=base_hash,
        files=file_records(base_dir), total_bytes=sum(f.stat().st_size for f in base_dir.glob("*") if f.is_file()),
        library_versions=state.versions, build_seconds=time.monotonic() - started, built_at=utc_now(),
        quality=quality, notes="Hugging Face folder every variant is built from",
    )
    write_manifest(state.dir, manifest)


def _describe_encoder(state: ModelBuild, source_dir: Path) -> None:
    hf_config = json.loads((source_dir / "config.json").read_text())
    state.manifest.architecture = (hf_config.get("architectures") or [hf_config.get("model_type", "")])[0]
    state.manifest.context_length = int(hf_config.get("max_position_embeddings", 0))
    state.manifest.parameters = _parameter_count(source_dir)
    write_manifest(state.dir, state.manifest)


def _parameter_count(base_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for weights in base_dir.glob("*.safetensors"):
        with safe_open(str(weights), framework="numpy") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                total += math.prod(handle.get_slice(key).get_shape())
    return total


def _build_variant(state: ModelBuild, base_dir: Path, variant: VariantConfig) -> None:
    label = f"{state.model.name}:{variant.name}"
    print(f"{label}: building ({variant.build.method})", flush=True)
    tmp = state.dir / f".tmp-{variant.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    started = time.monotonic()
    try:
        fields = run_method(variant.build, base_dir, state.source_path, tmp, state.cache_dir, label)
        build_seconds = time.monotonic() - started
        print(f"{label}: built in {build_seconds:.0f} s, evaluating", flush=True)
        quality = evaluate_variant(variant.build, tmp / fields["serve_paths"]["onnx"], base_dir, state.source_path,
                                   state.cache_dir, state.source_sha, label)
        record = VariantManifest(
            name=variant.name, params=variant.build.model_dump(), input_hash=state.input_hash(variant),
            files=file_records(tmp), total_bytes=_bytes(tmp, fields["serve_paths"]), library_versions=state.versions,
            build_seconds=build_seconds, built_at=utc_now(), quality=quality, **fields,
        )
        state.install(variant.name, tmp, record)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"{label}: done ({record.total_bytes / 1e6:.1f} MB)", flush=True)


def _bytes(folder: Path, serve_paths: dict[str, str]) -> int:
    """Size of what one backend loads (the ONNX folder when there is one), not of every artefact."""
    served = folder / serve_paths.get("onnx", serve_paths.get("vllm", "."))
    return sum(f.stat().st_size for f in served.rglob("*") if f.is_file())


def evaluate_model(config: QuantserveConfig, model: ModelConfig, variant_names: str = "all") -> ModelManifest:
    """Recompute quality for built variants and update their records."""
    with build_lock(model_dir_for(config, model)):
        return _evaluate_model(config, model, variant_names)


def _evaluate_model(config: QuantserveConfig, model: ModelConfig, variant_names: str) -> ModelManifest:
    state = ModelBuild(config, model)
    base_dir = _prepare_base(config, model)
    if model.kind == "chat":
        _describe_chat_model(state, base_dir)
    for variant in select_variants(model, variant_names):
        record = state.manifest.variants.get(variant.name)
        if record is None or "onnx" not in record.serve_paths:
            print(f"{model.name}:{variant.name}: no ONNX build to evaluate, skipped", flush=True)
            continue
        _reevaluate(state, base_dir, variant)
    return state.manifest


def _reevaluate(state: ModelBuild, base_dir: Path, variant: VariantConfig) -> None:
    record = state.manifest.variants[variant.name]
    onnx_dir = state.dir / variant.name / record.serve_paths["onnx"]
    quality = evaluate_variant(variant.build, onnx_dir, base_dir, state.source_path, state.cache_dir,
                               state.source_sha, f"{state.model.name}:{variant.name}")
    state.manifest.variants[variant.name] = record.model_copy(update={"quality": quality})
    write_manifest(state.dir, state.manifest)
