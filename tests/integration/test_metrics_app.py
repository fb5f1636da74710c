"""A real Prometheus scrapes the running application's /metrics: what it sees matches what the client saw."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from tests.helpers.prometheus_server import RULES_FILE, require_binary, run_prometheus

MODEL = "smollm2-135m:onnx-fp32"
LABELS = 'model="smollm2-135m",variant="onnx-fp32",endpoint="/v1/chat/completions"'

pytestmark = pytest.mark.slow


def test_prometheus_sees_the_requests_and_tokens_the_client_saw(serving_app, openai_client, tmp_path):
    host_port = serving_app.removeprefix("http://")
    with run_prometheus(host_port, tmp_path / "prometheus", rule_files=[RULES_FILE]) as prometheus:
        prometheus.wait_for_scrapes(2)
        before_requests = prometheus.value(f'sum(quantserve_requests_total{{{LABELS},code="200"}})') or 0.0
        before_tokens = prometheus.value(f"sum(quantserve_generation_tokens_total{{{LABELS}}})") or 0.0
        generated = 0
        for index in range(3):
            response = openai_client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": f"Count to {index + 3}."}], max_tokens=12,
                temperature=0)
            generated += response.usage.completion_tokens
        expected = before_requests + 3

        def counted() -> bool:
            return (prometheus.value(f'sum(quantserve_requests_total{{{LABELS},code="200"}})') or 0) >= expected

        prometheus.wait_for(counted, "the three requests to be scraped")
        tokens = prometheus.value(f"sum(quantserve_generation_tokens_total{{{LABELS}}})")
        assert tokens - before_tokens == pytest.approx(generated)
        ttft = prometheus.value(
            "histogram_quantile(0.5, sum by (le) (rate(quantserve_time_to_first_token_seconds_bucket"
            f"{{{LABELS}}}[1m])))")
        assert ttft is not None and 0 < ttft < 60
        ready = prometheus.value('quantserve_variant_ready{model="smollm2-135m",variant="onnx-fp32"}')
        assert ready == 1
        # gptq-int4 has no replica in the test config: it must show as 0 (the no-ready-replica alert needs it).
        assert prometheus.value('quantserve_variant_ready{model="smollm2-135m",variant="gptq-int4"}') == 0
        replica_query = 'sum(quantserve_replica_generation_tokens_total{model="smollm2-135m",variant="onnx-fp32"})'
        # The replica publishes its counters once a second, a scrape or two behind the router's.
        prometheus.wait_for(lambda: (prometheus.value(replica_query) or 0) >= generated,
                            "the replica's token counter to include these requests")
        busy = prometheus.value('sum(quantserve_replica_busy_seconds_total{model="smollm2-135m",variant="onnx-fp32"})')
        assert busy > 0
        assert all(group["rules"] for group in prometheus.rule_groups())


def test_the_metrics_exposition_passes_promtool(serving_app):
    exposition = httpx.get(f"{serving_app}/metrics", timeout=10).text
    assert "quantserve_requests_total" in exposition
    result = subprocess.run([require_binary("promtool"), "check", "metrics"], input=exposition, text=True,
                            capture_output=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == ""
