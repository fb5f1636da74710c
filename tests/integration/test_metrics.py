"""serving/metrics.py against the real Prometheus tools: promtool accepts the exposition and a real Prometheus
scrapes what was recorded."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from serving.metrics import MULTIPROC_ENV, QuantserveMetrics, prepare_multiprocess_dir, render_metrics
from tests.helpers.metrics_samples import REQUEST, finish, record_sample_traffic, start_child
from tests.helpers.prometheus_server import free_port, require_binary, run_prometheus


def test_exposition_passes_promtool_check_metrics(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    multiproc_env = prepare_multiprocess_dir(tmp_path / "prometheus-multiproc")
    finish(start_child(multiproc_env, "r1", requests=1, running=1))
    registry = CollectorRegistry()
    record_sample_traffic(QuantserveMetrics(registry), requests=1)
    for text in [render_metrics(path=multiproc_env[MULTIPROC_ENV]), render_metrics(registry)]:
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
        assert (check.returncode, check.stdout + check.stderr) == (0, b"")


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
