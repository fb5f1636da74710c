"""serving/metrics.py: values recorded in this process or in several (child) processes add up in one exposition."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from serving.metrics import (
    MULTIPROC_ENV,
    QuantserveMetrics,
    observe_all,
    prepare_multiprocess_dir,
    render_metrics,
    request_cost_dollars,
)
from tests.helpers.metrics_samples import CHAT, finish, replica_labels, request_labels, start_child, value


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


def test_observe_all_records_what_observing_each_amount_records() -> None:
    amounts = [0.0005, 0.02, 0.02, 0.019, 0.3, 7.0, 0.001]
    one_by_one, at_once = QuantserveMetrics(CollectorRegistry()), QuantserveMetrics(CollectorRegistry())
    for amount in amounts:
        one_by_one.inter_token_latency.labels(*CHAT.values()).observe(amount)
    observe_all(at_once.inter_token_latency.labels(*CHAT.values()), amounts)

    def samples(metrics: QuantserveMetrics) -> dict:
        [family] = metrics.inter_token_latency.collect()
        return {(s.name, s.labels.get("le")): s.value for s in family.samples if not s.name.endswith("_created")}

    assert samples(at_once) == pytest.approx(samples(one_by_one))
