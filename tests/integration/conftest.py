"""Integration-tier fixtures: the embedded models' variants (built once, cached under models/) and the real
application serving them on an ephemeral loopback port. Every test in this folder is marked `integration`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers import QUANTSERVE, REPO
from tests.helpers.apps import LIVE_VARIANTS, serving_test_config, started_app, vllm_app_config

BUILD_TIMEOUT_SECONDS = 1800
VLLM_START_TIMEOUT_SECONDS = 900  # vLLM's CPU engine takes minutes to start on a busy machine
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def built_models() -> Path:
    """Every variant of quantserve.yaml, built (or found up to date) by the real CLI. Returns models_dir."""
    log = REPO / "models" / ".test-build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as handle:
        result = subprocess.run([*QUANTSERVE, "quantize", "build"], cwd=REPO, stdout=handle,
                                stderr=subprocess.STDOUT, timeout=BUILD_TIMEOUT_SECONDS)
    if result.returncode != 0:
        pytest.fail(f"quantserve quantize build failed; last lines:\n{log.read_text()[-3000:]}")
    return (REPO / "models").resolve()


@pytest.fixture(scope="session")
def serving_app(built_models: Path, tmp_path_factory: pytest.TempPathFactory):
    """Base URL of the real application (Ray Serve on 127.0.0.1, an ephemeral port)."""
    folder = tmp_path_factory.mktemp("serving-app")
    with started_app(serving_test_config(built_models), folder, variants=LIVE_VARIANTS) as app:
        yield app.url


@pytest.fixture(scope="session")
def openai_client(serving_app: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{serving_app}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def async_openai_client(serving_app: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{serving_app}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def vllm_app(built_models: Path, tmp_path_factory: pytest.TempPathFactory):
    """(base URL, /ready body seen when the ONNX replicas were up and vLLM was still starting) of the one application
    with a vLLM replica (tests/helpers/apps.py: vllm_app_config), shared by the modules that need vLLM: it takes
    minutes to start here."""
    folder = tmp_path_factory.mktemp("vllm-app")
    onnx = ["smollm2-135m:onnx-fp32", "smollm2-135m:onnx-int4"]
    with started_app(vllm_app_config(built_models), folder, variants=onnx) as app:
        while_starting = httpx.get(f"{app.url}/ready", timeout=10).json()
        app.wait_ready(["smollm2-135m:vllm"], timeout=VLLM_START_TIMEOUT_SECONDS)  # started_app fails the test
        yield app.url, while_starting
