"""The chart's per-pod metrics exporter (helm/quantserve/files/metrics_exporter.py), run as the pod runs it, over
metrics that separate processes wrote in prometheus_client's multiprocess mode: the router's requests counted once,
a live replica's gauges kept, a crashed replica's gauges dropped."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving.launcher import free_port
from tests.helpers import REPO, wait_for

EXPORTER = REPO / "helm" / "quantserve" / "files" / "metrics_exporter.py"
ROUTER = """
from serving.metrics import QuantserveMetrics, RequestLabels
metrics = QuantserveMetrics()
for _ in range(3):
    metrics.record_request(RequestLabels("m", "int4", "onnx", "/v1/chat/completions"), status_code=200, e2e_seconds=0.1)
"""
REPLICA = """
import sys
from serving.metrics import QuantserveMetrics, ReplicaLabels
QuantserveMetrics().replica_started(ReplicaLabels("m", "int4", "onnx", sys.argv[1]), price_per_hour=0.5)
print("started", flush=True)
sys.stdin.readline()  # stay alive until the test closes stdin
"""


def python(code: str, folder: Path, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder)}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env, text=True, **kwargs)


@pytest.fixture
def metrics_folder(tmp_path: Path) -> Iterator[Path]:
    """A pod's metrics folder after: a router that answered 3 requests and exited cleanly (counters stay), a replica
    that is still running, and one that died without cleaning up (its live gauges must go)."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    assert python(ROUTER, folder).wait(timeout=60) == 0
    crashed = python(REPLICA, folder, "replica-crashed", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    live = python(REPLICA, folder, "replica-live", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert crashed.stdout.readline().strip() == live.stdout.readline().strip() == "started"
        crashed.kill()
        crashed.wait(timeout=30)
        yield folder
    finally:
        for process in (crashed, live):
            process.kill()
            process.wait(timeout=30)


@pytest.fixture
def exporter_url(metrics_folder: Path) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_folder)}
    process = subprocess.Popen([sys.executable, str(EXPORTER), "--host", "127.0.0.1", "--port", str(port)], cwd=REPO,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: _answers(url), timeout=30), process.stdout.read() if process.poll() is not None else ""
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/metrics", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def samples(text: str, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == name}


def test_the_exporter_sums_the_pods_processes(exporter_url: str):
    response = httpx.get(f"{exporter_url}/metrics", timeout=10)
    assert response.headers["content-type"].startswith("text/plain")
    [requests] = samples(response.text, "quantserve_requests_total").values()
    assert requests == 3
    prices = samples(response.text, "quantserve_replica_cost_dollars_per_hour")
    assert {dict(labels)["replica"] for labels in prices} == {"replica-live"}  # the crashed one's gauge is gone


def test_the_exporter_serves_metrics_only(exporter_url: str):
    assert httpx.get(f"{exporter_url}/", timeout=10).status_code == 404


def test_the_exporter_needs_the_folder(tmp_path: Path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing")}
    run = subprocess.run([sys.executable, str(EXPORTER), "--port", "0"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and "PROMETHEUS_MULTIPROC_DIR must name an existing folder" in run.stderr
