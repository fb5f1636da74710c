"""The Prometheus rules pass promtool, load and evaluate in a real Prometheus, and the dashboard's queries run there."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from serving.metrics import QuantserveMetrics, ReplicaLabels, RequestLabels
from tests.helpers.prometheus_server import (
    REPO_ROOT,
    RULES_FILE,
    PrometheusServer,
    free_port,
    require_binary,
    run_prometheus,
)

PROMTOOL_TESTS = sorted((REPO_ROOT / "tests" / "integration" / "promtool").glob("*.yaml"))
DASHBOARD_FILE = REPO_ROOT / "helm" / "quantserve" / "files" / "grafana-dashboard.json"
RULE_GROUPS = {"quantserve.latency", "quantserve.throughput-and-cost", "quantserve.alerts"}
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$namespace": ".*", "$release": ".*", "$model": ".*", "$variant": ".*", "$__rate_interval": "1m",
                     "$__range": "1h"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules() -> None:
    check = promtool("check", "rules", str(RULES_FILE))
    assert check.returncode == 0, check.stdout + check.stderr


def test_promtool_rule_unit_tests() -> None:
    assert PROMTOOL_TESTS, "no promtool rule tests in tests/integration/promtool"
    run = promtool("test", "rules", *map(str, PROMTOOL_TESTS))
    assert run.returncode == 0, run.stdout + run.stderr


def dashboard() -> dict:
    return json.loads(DASHBOARD_FILE.read_text())


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def test_dashboard_takes_its_datasource_and_variant_as_variables() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "release", "model", "variant"):
        assert variables[name]["multi"] and variables[name]["includeAll"], name
    panels = [p for p in dashboard()["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard()["panels"]}) == len(dashboard()["panels"])
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        filters = ('namespace=~"$namespace"', 'release=~"$release"', 'variant=~"$variant"')
        assert panel["targets"] and all(f in t["expr"] for t in panel["targets"] for f in filters), panel["title"]


def feed(metrics: QuantserveMetrics, requests: int) -> None:
    chat = RequestLabels("smollm2", "onnx-int4", "onnx", "/v1/chat/completions")
    for i in range(requests):
        metrics.record_request(chat, status_code=200 if i % 10 else 500, e2e_seconds=0.5 + i / 100,
                               ttft_seconds=0.05 * (i % 4 + 1), inter_token_seconds=[0.02] * 5,
                               queue_wait_seconds=0.01, prompt_tokens=20, generated_tokens=6,
                               replica_seconds=0.2, price_per_hour=0.08925)
    replica = ReplicaLabels(chat.model, chat.variant, chat.backend, "replica-1")
    metrics.replica_started(replica, price_per_hour=0.08925)
    metrics.record_replica_state(replica, running=2, waiting=1, slot_use_ratio=0.25)
    metrics.record_replica_step(replica, generated_tokens=12, step_seconds=0.3)
    metrics.set_variant_ready(chat.model, chat.variant, chat.backend, ready=True)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrometheusServer, QuantserveMetrics]]:
    registry = CollectorRegistry()
    metrics = QuantserveMetrics(registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        workdir = tmp_path_factory.mktemp("prometheus")
        with run_prometheus(f"127.0.0.1:{port}", workdir, rule_files=[RULES_FILE]) as prometheus:
            feed(metrics, 20)
            prometheus.wait_for_scrapes(1)
            feed(metrics, 20)
            prometheus.wait_for_scrapes(2)
            yield prometheus, metrics
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_rules_load_and_evaluate_in_prometheus(prometheus: tuple[PrometheusServer, QuantserveMetrics]) -> None:
    server, _ = prometheus
    assert {g["name"] for g in server.rule_groups()} == RULE_GROUPS
    p95 = 'namespace_release_model_variant:quantserve_time_to_first_token_seconds:quantile_rate5m{quantile="0.95"}'
    server.wait_for(lambda: server.value(p95) is not None, "the recorded TTFT p95")
    assert 0.1 < server.value(p95) <= 0.25
    server.wait_for(lambda: all(r["health"] == "ok" for g in server.rule_groups() for r in g["rules"]),
                    "every rule evaluated without error")


def test_dashboard_queries_run_in_prometheus(prometheus: tuple[PrometheusServer, QuantserveMetrics]) -> None:
    server, _ = prometheus
    for query in dashboard_queries():
        for name, value in GRAFANA_VARIABLES.items():
            query = query.replace(name, value)
        server.query(query)  # raises on a PromQL error
    tokens = 'sum(rate(quantserve_generation_tokens_total{variant=~".*"}[1m]))'
    assert server.value(tokens) > 0
