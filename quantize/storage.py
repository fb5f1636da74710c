"""`quantserve quantize push|pull s3://BUCKET/PREFIX`: built variants through S3-compatible object storage.

The bucket mirrors models_dir: `PREFIX/<model>/manifest.json` and `PREFIX/<model>/<variant>/<file>`.

push checks the local files against the manifest, uploads them, and uploads the manifest last (merged with the
variants the bucket already lists), so a reader that finds a manifest entry finds its files.

pull downloads every selected variant into a temp folder beside its final place and checks each file's size and
sha256 against the manifest. Only when all of them check out are the folders renamed into place, in the order a
build uses (see quantize/build.py): the local manifest first drops the records being replaced, the folders are
swapped, then the new records are written. An interrupted or refused pull leaves no variant listed whose files are
incomplete; its temp folders are removed on the way out or by the next build or pull.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from quantize.build import build_lock, clean_leftovers, select_variants
from quantize.errors import QuantizeError
from quantize.object_store import ObjectStore, transfer_progress
from quantserve.config import ModelConfig, QuantserveConfig
from quantserve.manifest import (
    MANIFEST_NAME,
    ModelManifest,
    VariantManifest,
    built_name,
    read_manifest,
    sha256_file,
    verify_files,
    write_manifest,
)


@dataclass(frozen=True)
class Transferred:
    """What one push or pull did for a model, for the CLI to print."""

    model: str
    variants: list[str]
    skipped: list[str]
    bytes: int
    seconds: float


def built_names(model: ModelConfig, variant_names: str) -> list[str]:
    """Folders (manifest keys) holding the chosen variants, in config order; `method: base` maps to base/."""
    names = [built_name(v.name, v.build.method) for v in select_variants(model, variant_names)]
    return list(dict.fromkeys(names))


def push_model(config: QuantserveConfig, model: ModelConfig, variant_names: str, store: ObjectStore) -> Transferred:
    model_dir = Path(config.models_dir) / model.name
    started = time.monotonic()
    with build_lock(model_dir):
        local = read_manifest(model_dir)
        records = _local_records(model_dir, local, built_names(model, variant_names))
        remote = _remote_manifest(store, model.name)  # also the first request: a missing bucket fails here
        for name, record in records.items():
            _upload_variant(store, model.name, name, model_dir / name, record)
        merged = _merged(local, remote, records)
        store.write_text(merged.model_dump_json(indent=2) + "\n", model.name, MANIFEST_NAME)
    return Transferred(model.name, list(records), [], _bytes(records), time.monotonic() - started)


def pull_model(config: QuantserveConfig, model: ModelConfig, variant_names: str, store: ObjectStore) -> Transferred:
    model_dir = Path(config.models_dir) / model.name
    started = time.monotonic()
    remote = _remote_manifest(store, model.name)
    if remote is None:
        raise QuantizeError(f"{store.location.uri(model.name, MANIFEST_NAME)} does not exist; "
                            f"run `quantserve quantize push` for {model.name} first")
    wanted = _listed(remote, built_names(model, variant_names), store.location.uri(model.name, MANIFEST_NAME))
    with build_lock(model_dir):
        clean_leftovers(model_dir)
        local = read_manifest(model_dir)
        skipped = [name for name, record in wanted.items() if _is_current(model_dir, local, name, record)]
        fetch = {name: record for name, record in wanted.items() if name not in skipped}
        staged = {}
        try:
            for name, record in fetch.items():
                staged[name] = _download_variant(store, model.name, model_dir, name, record)
            _place(model_dir, local, remote, staged, fetch)
        finally:
            for folder in staged.values():
                shutil.rmtree(folder, ignore_errors=True)
    return Transferred(model.name, list(fetch), skipped, _bytes(fetch), time.monotonic() - started)


def _bytes(records: dict[str, VariantManifest]) -> int:
    """Every file's size (a record's total_bytes counts only what one backend loads)."""
    return sum(file.bytes for record in records.values() for file in record.files)


def _local_records(model_dir: Path, local: ModelManifest | None, names: list[str]) -> dict[str, VariantManifest]:
    """The manifest records to push, each checked against its files: a corrupt build is never uploaded."""
    if local is None:
        raise QuantizeError(f"nothing built in {model_dir}; run `quantserve quantize build` first")
    missing = [name for name in names if name not in local.variants]
    if missing:
        raise QuantizeError(f"{model_dir}: {', '.join(missing)} not built; run `quantserve quantize build`")
    records = {name: local.variants[name] for name in names}
    for name, record in records.items():
        if problems := verify_files(model_dir / name, record):
            raise QuantizeError(f"{model_dir / name}: {problems[0]}; rebuild it with "
                                "`quantserve quantize build --force` before pushing")
    return records


def _upload_variant(store: ObjectStore, model: str, name: str, folder: Path, record: VariantManifest) -> None:
    with transfer_progress(f"push {model}:{name}", _bytes({name: record})) as progress:
        for file in record.files:
            store.upload(folder / file.path, progress, model, name, file.path)


def _remote_manifest(store: ObjectStore, model: str) -> ModelManifest | None:
    text = store.read_text(model, MANIFEST_NAME)
    if text is None:
        return None
    try:
        return ModelManifest.model_validate_json(text)
    except ValidationError as exc:
        raise QuantizeError(f"{store.location.uri(model, MANIFEST_NAME)} is not a quantserve manifest "
                            f"({exc.error_count()} errors); push again") from None


def _merged(local: ModelManifest, remote: ModelManifest | None,
            pushed: dict[str, VariantManifest]) -> ModelManifest:
    """The bucket's manifest after a push: what it listed for the same source, plus what was pushed now."""
    kept = remote.variants if remote and remote.source_sha256 == local.source_sha256 else {}
    return local.model_copy(update={"variants": {**kept, **pushed}})


def _listed(remote: ModelManifest, names: list[str], manifest_uri: str) -> dict[str, VariantManifest]:
    missing = [name for name in names if name not in remote.variants]
    if missing:
        raise QuantizeError(f"{manifest_uri} does not list {', '.join(missing)}; push them first "
                            f"(it lists {', '.join(remote.variants) or 'nothing'})")
    return {name: remote.variants[name] for name in names}


def _is_current(model_dir: Path, local: ModelManifest | None, name: str, record: VariantManifest) -> bool:
    """Already here, byte for byte: the same record locally and files that match it."""
    if local is None or local.variants.get(name) != record:
        return False
    return not verify_files(model_dir / name, record)


def _download_variant(store: ObjectStore, model: str, model_dir: Path, name: str, record: VariantManifest) -> Path:
    """The variant in a temp folder beside its place, every file checked; QuantizeError on the first mismatch."""
    staging = model_dir / f".tmp-pull-{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with transfer_progress(f"pull {model}:{name}", _bytes({name: record})) as progress:
            for file in record.files:
                target = _inside(staging, file.path, store.location.uri(model, MANIFEST_NAME))
                store.download(target, progress, model, name, file.path)
                _check_file(target, file.bytes, file.sha256, store.location.uri(model, name, file.path))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _inside(folder: Path, relative: str, manifest_uri: str) -> Path:
    """A manifest path under `folder`; a path that climbs out (`../`) is refused, not written."""
    target = (folder / relative).resolve()
    if not target.is_relative_to(folder.resolve()) or target == folder.resolve():
        raise QuantizeError(f"{manifest_uri} lists {relative!r}, a path outside its variant folder; refused")
    return target


def _check_file(path: Path, size: int, sha256: str, uri: str) -> None:
    if path.stat().st_size != size:
        raise QuantizeError(f"{uri}: {path.stat().st_size} bytes, the manifest says {size}; nothing placed")
    if sha256_file(path) != sha256:
        raise QuantizeError(f"{uri}: sha256 differs from the manifest; nothing placed")


def _place(model_dir: Path, local: ModelManifest | None, remote: ModelManifest, staged: dict[str, Path],
           records: dict[str, VariantManifest]) -> None:
    """Swap verified folders into place and record them (the order is in the module docstring)."""
    if not staged:
        return
    same_source = local is not None and local.source_sha256 == remote.source_sha256
    kept = {n: r for n, r in local.variants.items() if n not in staged} if same_source else {}
    manifest = remote.model_copy(update={"variants": kept})
    write_manifest(model_dir, manifest)
    for name, folder in staged.items():
        final, aside = model_dir / name, model_dir / f".old-{name}"
        shutil.rmtree(aside, ignore_errors=True)
        if final.exists():
            final.rename(aside)
        folder.rename(final)
        shutil.rmtree(aside, ignore_errors=True)
        manifest.variants[name] = records[name]
    write_manifest(model_dir, manifest)
