"""Configs for the real application and a context manager that starts it (Ray Serve on 127.0.0.1, an ephemeral
port) and always stops it. Integration tier only: this imports the launcher, hence Ray."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httpx
import pytest
import yaml

from serving.launcher import AppStartError, running_app
from tests.helpers import REPO, wait_for

REQUEST_TIMEOUT_SECONDS = 12
LIVE_VARIANTS = ["smollm2-135m:onnx-fp32", "smollm2-135m:onnx-int4", "minilm-l6-v2:onnx-int8"]


def serving_test_config(models_dir: Path) -> dict:
    """quantserve.yaml, adjusted so that tests can see fallbacks and a variant without replicas.

    - smollm2-135m:onnx-int8 has no replica and falls back to onnx-int4 (the fallback path);
    - smollm2-135m:gptq-int4 has no replica and no fallback (the 503 path);
    - minilm-l6-v2:onnx-fp32 has no replica (embeddings answer from onnx-int8);
    - smollm2-135m:vllm has no replica here (vllm_app_config: an app of its own, started once);
    - requests time out after REQUEST_TIMEOUT_SECONDS.
    Contexts are shortened to keep KV buffers small.
    """
    config = yaml.safe_load((REPO / "quantserve.yaml").read_text())
    config["models_dir"] = str(models_dir)
    config["server"]["limits"] = {"request_timeout_s": REQUEST_TIMEOUT_SECONDS}  # the timeout test waits this long
    overrides = {
        ("smollm2-135m", "onnx-int8"): {"replicas": 0, "fallbacks": ["onnx-int4"]},
        ("smollm2-135m", "gptq-int4"): {"replicas": 0, "fallbacks": []},
        ("minilm-l6-v2", "onnx-fp32"): {"replicas": 0},
        ("smollm2-135m", "vllm"): {"replicas": 0},  # vLLM has its own app (vllm_app_config), started once
    }
    for model in config["models"]:
        for variant in model["variants"]:
            serve = variant.setdefault("serve", {})
            serve.update(overrides.get((model["name"], variant["name"]), {}))
            if model["kind"] == "chat":
                serve["max_context"] = 1024
                serve["max_batch_size"] = 4
    return config


def app_config(models_dir: Path, live: list[str], server: dict) -> dict:
    """quantserve.yaml serving only the `live` variants (model:variant ids) with `server` settings; the other
    variants are disabled (not listed), models without a live variant left out, chat contexts kept short."""
    config = yaml.safe_load((REPO / "quantserve.yaml").read_text())
    config["models_dir"] = str(models_dir)
    config["server"].update(server)
    config["models"] = [m for m in config["models"] if any(v.startswith(f"{m['name']}:") for v in live)]
    for model in config["models"]:
        for variant in model["variants"]:
            serve = variant.setdefault("serve", {})
            serve["enabled"] = f"{model['name']}:{variant['name']}" in live
            if model["kind"] == "chat":
                serve.update({"max_context": 1024, "max_batch_size": 4})
    return config


@contextlib.contextmanager
def started_app(config: dict, folder: Path, variants: list[str] | None = None, extra_args: tuple[str, ...] = ()):
    """The real application for `config`, started in `folder` (log: folder/serve.log) with `quantserve serve`'s
    `extra_args`; always stopped."""
    config_path = folder / "quantserve.yaml"
    config_path.write_text(yaml.safe_dump(config))
    try:
        with running_app(config_path, folder / "serve.log", variants=variants, cwd=REPO,
                         extra_args=extra_args) as app:
            yield app
    except AppStartError as exc:
        pytest.fail(str(exc))


VLLM_APP_VARIANTS = ("vllm", "onnx-fp32", "onnx-int4")


def vllm_app_config(models_dir: Path) -> dict:
    """quantserve.yaml with only the chat model: vllm, onnx-fp32 (its parity reference) and onnx-int4 (structured
    outputs on both backends) live, the rest listed without replicas; vLLM's dtype `auto` (the replica picks it for
    this CPU); prompts limited to 600 tokens (a test checks the limit on both backends)."""
    config = yaml.safe_load((REPO / "quantserve.yaml").read_text())
    config["models_dir"] = str(models_dir)
    config["models"] = [m for m in config["models"] if m["name"] == "smollm2-135m"]
    config["server"]["limits"] = {"max_prompt_tokens": 600}
    for variant in config["models"][0]["variants"]:
        serve = variant.setdefault("serve", {})
        serve.update({"max_context": 1024, "max_batch_size": 4})
        if variant["name"] not in VLLM_APP_VARIANTS:
            serve["replicas"] = 0
        if variant["name"] == "vllm":
            serve["vllm"] = {**serve.get("vllm", {}), "dtype": "auto"}
    return config


def routers_that_logged(app, *texts: str) -> int:
    """How many router replicas' log files (Serve writes one per replica, in the app's logs folder) hold any of
    `texts`."""
    logs = app.log.parent / "logs"
    return sum(any(text in path.read_text(errors="replace") for text in texts) for path in logs.glob("*Router*.log"))


def both_routers_answer(app) -> None:
    """Until each of two router replicas has answered /health (the proxy routes to a replica once it is up)."""
    def up() -> bool:
        return httpx.get(f"{app.url}/health", timeout=10).status_code == 200

    assert wait_for(lambda: routers_that_logged(app, "/health") == 2 or not up(), 120), \
        "the second router replica never answered"
