"""`quantserve quantize push|pull` through the real CLI (a subprocess) against a real S3-compatible server: moto's
server mode on 127.0.0.1, an ephemeral port. The variants are small folders of random bytes made here, recorded
in a manifest the way a build records them, so every case takes seconds."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml
from moto.server import ThreadedMotoServer

from quantserve.manifest import ModelManifest, VariantManifest, file_records, read_manifest, write_manifest
from tests.helpers import QUANTSERVE, REPO

BUCKET = "quantserve-models"
MODEL = "tiny"
VARIANTS = ("onnx-int4", "onnx-fp32")
FILE_BYTES = {"model.onnx": 9 << 20, "model.onnx.data": 300_000, "tokenizer/tokenizer.json": 2_000}
TIMEOUT_SECONDS = 120


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_endpoint: str):
    """A fresh bucket per test; the client the test uses to look at (or damage) what the CLI wrote."""
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


@pytest.fixture
def aws_env(s3_endpoint: str, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment: this server's endpoint and test credentials, nothing from the user's AWS setup."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    return env | {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
                  "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                  "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
                  "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}


def write_config(folder: Path, models_dir: Path) -> Path:
    config = {"models_dir": str(models_dir), "models": [{
        "name": MODEL, "kind": "chat", "source": "package:not_needed/model.gguf", "default_variant": VARIANTS[0],
        "variants": [{"name": name, "build": {"method": "onnx", "precision": name.split("-")[1]}}
                     for name in VARIANTS],
    }]}
    path = folder / f"{models_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def build_variant(model_dir: Path, name: str, source_sha: str = "source-1") -> VariantManifest:
    """A variant folder of random bytes and its manifest record, as `quantserve quantize build` writes them."""
    folder = model_dir / name
    for relative, size in FILE_BYTES.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(os.urandom(size))
    record = VariantManifest(name=name, format="onnx", bits=4, backends=["onnx"], serve_paths={"onnx": "."},
                             input_hash=f"hash-of-{name}", files=file_records(folder),
                             total_bytes=sum(FILE_BYTES.values()), build_seconds=1.0, built_at="2026-12-02T00:00:00")
    manifest = read_manifest(model_dir) or ModelManifest(model=MODEL, kind="chat", source="s", source_sha256=source_sha)
    manifest.variants[name] = record
    write_manifest(model_dir, manifest)
    return record


@pytest.fixture
def built(tmp_path: Path) -> Path:
    """A config whose models_dir holds both variants, built."""
    models_dir = tmp_path / "built"
    for name in VARIANTS:
        build_variant(models_dir / MODEL, name)
    return write_config(tmp_path, models_dir)


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    """A config whose models_dir is empty: where pulls land."""
    return write_config(tmp_path, tmp_path / "pulled")


def quantize(env: dict[str, str], command: str, uri: str, config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*QUANTSERVE, "quantize", command, uri, "--config", str(config), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)


def models_dir(config: Path) -> Path:
    return Path(yaml.safe_load(config.read_text())["models_dir"])


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder with its bytes, but the build lock (an empty file any build or pull takes)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != ".build.lock"}


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def assert_user_error(result: subprocess.CompletedProcess, *words: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quantserve: error:"), result.stderr[-3000:]
    for word in words:
        assert word in lines[0]
    return lines[0]


def corrupt(client, key: str) -> None:
    """Flip one byte of an object in the bucket, keeping its size: only the sha256 can tell."""
    body = bytearray(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=BUCKET, Key=key, Body=bytes(body))


# --- push and pull --------------------------------------------------------------------------------------------


def test_push_then_pull_round_trip(bucket, aws_env, built, empty):
    uri = f"s3://{BUCKET}/release/v1"
    pushed = quantize(aws_env, "push", uri, built)
    assert_ok(pushed)
    assert f"{MODEL}: pushed {', '.join(VARIANTS)}" in pushed.stdout
    keys = {item["Key"] for item in bucket.list_objects_v2(Bucket=BUCKET)["Contents"]}
    expected = {f"release/v1/{MODEL}/{name}/{file}" for name in VARIANTS for file in FILE_BYTES}
    assert keys == expected | {f"release/v1/{MODEL}/manifest.json"}

    pulled = quantize(aws_env, "pull", uri, empty)
    assert_ok(pulled)
    assert f"{MODEL}: pulled {', '.join(VARIANTS)}" in pulled.stdout
    assert tree(models_dir(empty) / MODEL) == tree(models_dir(built) / MODEL)
    assert read_manifest(models_dir(empty) / MODEL) == read_manifest(models_dir(built) / MODEL)


def test_pull_again_skips_variants_already_here(bucket, aws_env, built, empty):
    uri = f"s3://{BUCKET}"
    assert_ok(quantize(aws_env, "push", uri, built))
    assert_ok(quantize(aws_env, "pull", uri, empty))
    again = quantize(aws_env, "pull", uri, empty)
    assert_ok(again)
    assert f"up to date here, skipped: {', '.join(VARIANTS)}" in again.stdout
    assert "pulled" not in again.stdout


def test_pushes_of_single_variants_add_up_in_the_bucket_manifest(bucket, aws_env, built, empty):
    uri = f"s3://{BUCKET}/models"
    for name in VARIANTS:
        assert_ok(quantize(aws_env, "push", uri, built, "--variants", name))
    assert_ok(quantize(aws_env, "pull", uri, empty, "--variants", VARIANTS[1]))
    assert list(read_manifest(models_dir(empty) / MODEL).variants) == [VARIANTS[1]]
    assert_ok(quantize(aws_env, "pull", uri, empty))
    assert set(read_manifest(models_dir(empty) / MODEL).variants) == set(VARIANTS)


# --- damage: refused by size or hash, nothing placed ----------------------------------------------------------


def test_corrupted_object_is_refused_by_hash_and_nothing_is_placed(bucket, aws_env, built, empty):
    uri = f"s3://{BUCKET}/release"
    assert_ok(quantize(aws_env, "push", uri, built))
    corrupt(bucket, f"release/{MODEL}/{VARIANTS[1]}/tokenizer/tokenizer.json")
    refused = quantize(aws_env, "pull", uri, empty)
    line = assert_user_error(refused, f"{MODEL}/{VARIANTS[1]}/tokenizer/tokenizer.json", "sha256", "nothing placed")
    assert "Traceback" not in refused.stderr, line
    assert tree(models_dir(empty)) == {}


def test_refused_pull_keeps_the_variants_already_here(bucket, aws_env, built, empty):
    uri = f"s3://{BUCKET}/release"
    assert_ok(quantize(aws_env, "push", uri, built))
    assert_ok(quantize(aws_env, "pull", uri, empty))
    before = tree(models_dir(empty))
    build_variant(models_dir(built) / MODEL, VARIANTS[0])  # a rebuild: new bytes, new record
    assert_ok(quantize(aws_env, "push", uri, built))
    corrupt(bucket, f"release/{MODEL}/{VARIANTS[0]}/model.onnx")
    assert_user_error(quantize(aws_env, "pull", uri, empty), f"{VARIANTS[0]}/model.onnx", "sha256")
    assert tree(models_dir(empty)) == before


def test_push_refuses_a_variant_whose_files_no_longer_match_its_manifest(bucket, aws_env, built):
    damaged = models_dir(built) / MODEL / VARIANTS[0] / "model.onnx.data"
    damaged.write_bytes(damaged.read_bytes()[:-1])
    assert_user_error(quantize(aws_env, "push", f"s3://{BUCKET}", built), "model.onnx.data", "--force")
    assert "Contents" not in bucket.list_objects_v2(Bucket=BUCKET)


# --- user errors: one line, exit 2 ----------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["push", "pull"])
def test_missing_bucket_is_one_line(bucket, aws_env, built, command):
    result = quantize(aws_env, command, "s3://no-such-bucket/models", built)
    assert_user_error(result, "no-such-bucket", "does not exist")


@pytest.mark.parametrize("uri", ["http://example/models", "s3:///models", "s3://Bad_Bucket/x", "models"])
def test_bad_uri_is_one_line(aws_env, built, uri):
    assert_user_error(quantize(aws_env, "push", uri, built), repr(uri), "s3://BUCKET")


def test_missing_credentials_is_one_line(bucket, aws_env, built):
    no_credentials = {k: v for k, v in aws_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    assert_user_error(quantize(no_credentials, "push", f"s3://{BUCKET}", built), "credentials",
                      "AWS_ACCESS_KEY_ID")


def test_nothing_built_is_one_line(bucket, aws_env, empty):
    assert_user_error(quantize(aws_env, "push", f"s3://{BUCKET}", empty), "nothing built", "quantize build")


def test_nothing_pushed_is_one_line(bucket, aws_env, empty):
    assert_user_error(quantize(aws_env, "pull", f"s3://{BUCKET}/nowhere", empty),
                      f"s3://{BUCKET}/nowhere/{MODEL}/manifest.json", "push")
    assert tree(models_dir(empty)) == {}


def test_variant_not_in_the_bucket_is_one_line(bucket, aws_env, built, empty):
    uri = f"s3://{BUCKET}"
    assert_ok(quantize(aws_env, "push", uri, built, "--variants", VARIANTS[0]))
    assert_user_error(quantize(aws_env, "pull", uri, empty), "does not list", VARIANTS[1])
    assert tree(models_dir(empty)) == {}


def test_unknown_variant_or_model_is_one_line(bucket, aws_env, built):
    assert_user_error(quantize(aws_env, "push", f"s3://{BUCKET}", built, "--variants", "nope"), "nope")
    assert_user_error(quantize(aws_env, "pull", f"s3://{BUCKET}", built, "--models", "nope"), "nope", MODEL)


def test_missing_uri_is_a_usage_error(aws_env, built):
    result = subprocess.run([*QUANTSERVE, "quantize", "pull", "--config", str(built)], cwd=REPO, env=aws_env,
                            capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
    assert result.returncode == 2 and "URI" in result.stderr and "Traceback" not in result.stderr
