"""The replica's time-to-first-token parts and prefix-cache counters (serving/metrics.py), in one process."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from serving.metrics import QuantserveMetrics, ReplicaLabels
from tests.helpers.metrics_samples import CHAT, replica_labels, value

REPLICA = ReplicaLabels(CHAT.model, CHAT.variant, CHAT.backend, "r1")


@pytest.fixture
def metrics() -> QuantserveMetrics:
    return QuantserveMetrics(CollectorRegistry())


def exposition(metrics: QuantserveMetrics) -> bytes:
    return generate_latest(metrics.registry)


def test_each_measured_stage_of_the_first_token_is_observed_and_unmeasured_ones_are_left_out(metrics):
    metrics.record_first_token_parts(REPLICA, {"template_tokenize": 0.002, "queue": 0.01, "prefill": 0.4,
                                               "first_sample": None})
    text = exposition(metrics)
    name = "quantserve_replica_first_token_seconds"
    assert value(text, f"{name}_sum", **replica_labels("r1"), stage="prefill") == pytest.approx(0.4)
    assert value(text, f"{name}_count", **replica_labels("r1"), stage="queue") == 1
    assert value(text, f"{name}_count", **replica_labels("r1"), stage="first_sample") is None


def test_prefix_cache_hits_misses_and_tokens_are_counted(metrics):
    metrics.record_prefix_cache(REPLICA, prompt_tokens=1000, cached_tokens=0)
    metrics.record_prefix_cache(REPLICA, prompt_tokens=1020, cached_tokens=998)
    metrics.record_prefix_cache(REPLICA, prompt_tokens=30, cached_tokens=16)
    text = exposition(metrics)
    requests, tokens = "quantserve_replica_prefix_cache_requests_total", "quantserve_replica_prefix_cache_tokens_total"
    assert value(text, requests, **replica_labels("r1"), result="hit") == 2
    assert value(text, requests, **replica_labels("r1"), result="miss") == 1
    assert value(text, tokens, **replica_labels("r1"), result="reused") == 1014
    assert value(text, tokens, **replica_labels("r1"), result="computed") == 1000 + 22 + 14
