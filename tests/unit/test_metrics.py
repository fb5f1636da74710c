"""serving/metrics.py: values recorded in several processes add up in one exposition that Prometheus accepts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.parser import text_string_to_metric_families
from tests.helpers.prometheus_server import free_port, require_binary, run_prometheus

from serving.metrics import (
    MULTIPROC_ENV,
    QuantserveMetrics,
    ReplicaLabels,
    RequestLabels,
    prepare_multiprocess_dir,
    render_metrics,
    request_cost_dollars,
)

CHAT = RequestLabels("smollm2", "onnx-int4", "onnx", "/v1/chat/completions")
REQUEST = dict(status_code=200, e2e_seconds=1.2, ttft_seconds=0.3, inter_token_seconds=[0.02, 0.03],
               queue_wait_seconds=0.05, prompt_tokens=12, generated_tokens=3, replica_seconds=0.5, price_per_hour=0.72)

# Runs in a child process whose environment has PROMETHEUS_MULTIPROC_DIR from the start, like a Ray replica.
CHILD = textwrap.dedent("""
    import json, os, sys
    from serving.metrics import QuantserveMetrics, ReplicaLabels, RequestLabels, mark_process_dead
    job = json.loads(sys.argv[1])
    metrics = QuantserveMetrics()
    labels = RequestLabels(*job["labels"])
    for _ in range(job["requests"]):
        metrics.record_request(labels, **job["request"])
    replica = ReplicaLabels(*job["labels"][:3], job["replica"])
    metrics.replica_started(replica, price_per_hour=job["request"]["price_per_hour"])
    metrics.record_replica_state(replica, running=job["running"], waiting=1, slot_use_ratio=0.5)
    metrics.record_replica_step(replica, generated_tokens=7, step_seconds=0.25)
    with metrics.request_in_flight(labels):
        print("recorded", flush=True)
        if job["crash"]:
            os._exit(0)  # dies without leaving the block or marking itself dead
        sys.stdin.readline()
    mark_process_dead()
""")


def start_child(multiproc_env: dict[str, str], replica: str, requests: int, running: int,
                crash: bool = False) -> subprocess.Popen:
    job = {"labels": [CHAT.model, CHAT.variant, CHAT.backend, CHAT.endpoint], "request": REQUEST,
           "requests": requests, "replica": replica, "running": running, "crash": crash}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(job)], env={**os.environ, **multiproc_env},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "recorded\n"
    return child


def finish(child: subprocess.Popen) -> None:
    child.communicate("\n", timeout=30)
    assert child.returncode == 0


def samples(exposition: bytes) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(exposition.decode()) for s in family.samples}


def value(exposition: bytes, name: str, **labels: str) -> float | None:
    return samples(exposition).get((name, frozenset(labels.items())))


def request_labels(**extra: str) -> dict[str, str]:
    return {"model": CHAT.model, "variant": CHAT.variant, "backend": CHAT.backend, "endpoint": CHAT.endpoint, **extra}


def replica_labels(replica: str) -> dict[str, str]:
    return {"model": CHAT.model, "variant": CHAT.variant, "backend": CHAT.backend, "replica": replica}


@pytest.fixture
def multiproc_env(tmp_path: Path) -> dict[str, str]:
    return prepare_multiprocess_dir(tmp_path / "prometheus-multiproc")


def test_request_metrics_add_up_over_processes(multiproc_env: dict[str, str]) -> None:
    for child in [start_child(multiproc_env, "r1", requests=2, running=3),
                  start_child(multiproc_env, "r2", requests=3, running=5)]:
        finish(child)
    text = render_metrics(path=multiproc_env[MULTIPROC_ENV])
    assert value(text, "quantserve_requests_total", **request_labels(code="200")) == 5
    assert value(text, "quantserve_time_to_first_token_seconds_count", **request_labels()) == 5
    assert value(text, "quantserve_time_to_first_token_seconds_bucket", **request_labels(le="0.25")) == 0
    assert value(text, "quantserve_time_to_first_token_seconds_bucket", **request_labels(le="0.5")) == 5
    assert value(text, "quantserve_inter_token_latency_seconds_count", **request_labels()) == 10
    assert value(text, "quantserve_e2e_request_latency_seconds_sum", **request_labels()) == pytest.approx(6.0)
    assert value(text, "quantserve_queue_wait_seconds_count", **request_labels()) == 5
    assert value(text, "quantserve_prompt_tokens_total", **request_labels()) == 60
    assert value(text, "quantserve_generation_tokens_total", **request_labels()) == 15
    assert value(text, "quantserve_request_cost_dollars_total", **request_labels()) == pytest.approx(5 * 0.0001)


def test_replica_gauges_stay_per_replica_and_dead_processes_drop_out(multiproc_env: dict[str, str]) -> None:
    alive = start_child(multiproc_env, "r1", requests=1, running=3)
    try:
        start_child(multiproc_env, "r2", requests=1, running=5, crash=True).wait(timeout=30)
        text = render_metrics(path=multiproc_env[MULTIPROC_ENV])
        assert value(text, "quantserve_requests_in_flight", **request_labels()) == 1  # the crashed one is gone
        assert value(text, "quantserve_replica_running_requests", **replica_labels("r1")) == 3
        assert value(text, "quantserve_replica_running_requests", **replica_labels("r2")) is None
        assert value(text, "quantserve_replica_generation_tokens_total", **replica_labels("r2")) == 7  # counters stay
    finally:
        finish(alive)
    text = render_metrics(path=multiproc_env[MULTIPROC_ENV])
    assert value(text, "quantserve_requests_in_flight", **request_labels()) is None
    assert value(text, "quantserve_replica_cost_dollars_per_hour", **replica_labels("r1")) is None
    assert value(text, "quantserve_requests_total", **request_labels(code="200")) == 2


def test_exposition_passes_promtool_check_metrics(multiproc_env: dict[str, str]) -> None:
    promtool = require_binary("promtool")
    finish(start_child(multiproc_env, "r1", requests=1, running=1))
    registry = CollectorRegistry()
    record_sample_traffic(QuantserveMetrics(registry), requests=1)
    for text in [render_metrics(path=multiproc_env[MULTIPROC_ENV]), render_metrics(registry)]:
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
        assert (check.returncode, check.stdout + check.stderr) == (0, b"")


def test_single_process_renders_the_given_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    registry = CollectorRegistry()
    metrics = QuantserveMetrics(registry)
    with metrics.request_in_flight(CHAT):
        assert value(render_metrics(registry), "quantserve_requests_in_flight", **request_labels()) == 1
    metrics.set_variant_ready(CHAT.model, CHAT.variant, CHAT.backend, ready=False)
    ready = {"model": CHAT.model, "variant": CHAT.variant, "backend": CHAT.backend}
    assert value(render_metrics(registry), "quantserve_variant_ready", **ready) == 0


def test_multiprocess_dir_set_after_import_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="runtime_env"):
        QuantserveMetrics(CollectorRegistry())


def test_prepare_multiprocess_dir_empties_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "multiproc"
    folder.mkdir()
    (folder / "counter_123.db").write_bytes(b"stale")
    assert prepare_multiprocess_dir(folder) == {MULTIPROC_ENV: str(folder)}
    assert list(folder.iterdir()) == []


def test_request_cost_is_hourly_price_times_replica_seconds() -> None:
    assert request_cost_dollars(price_per_hour=0.72, replica_seconds=5) == pytest.approx(0.001)
    with pytest.raises(ValueError):
        request_cost_dollars(price_per_hour=0.72, replica_seconds=-1)


def record_sample_traffic(metrics: QuantserveMetrics, requests: int) -> None:
    for i in range(requests):
        metrics.record_request(CHAT, **{**REQUEST, "ttft_seconds": 0.1 * (i % 5 + 1)})
    metrics.record_request(CHAT, status_code=503, e2e_seconds=0.01)
    replica = ReplicaLabels(CHAT.model, CHAT.variant, CHAT.backend, "r1")
    metrics.replica_started(replica, price_per_hour=REQUEST["price_per_hour"])
    metrics.record_replica_step(replica, generated_tokens=4, step_seconds=0.1)


def test_real_prometheus_scrapes_recorded_metrics(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = QuantserveMetrics(registry)
    record_sample_traffic(metrics, requests=10)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        with run_prometheus(f"127.0.0.1:{port}", tmp_path / "prometheus") as prometheus:
            prometheus.wait_for_scrapes(1)
            record_sample_traffic(metrics, requests=10)
            prometheus.wait_for_scrapes(2)
            p50 = prometheus.value("histogram_quantile(0.5, sum by (le) "
                                   "(rate(quantserve_time_to_first_token_seconds_bucket[1m])))")
            assert p50 is not None and 0.1 <= p50 <= 0.5
            assert prometheus.value('sum(quantserve_requests_total{code="200"})') == 20
            assert prometheus.value('sum(quantserve_requests_total{code="503"})') == 2
            assert prometheus.value("sum(quantserve_generation_tokens_total)") == 20 * REQUEST["generated_tokens"]
            assert prometheus.value("sum(quantserve_request_cost_dollars_total)") == pytest.approx(20 * 0.0001)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
