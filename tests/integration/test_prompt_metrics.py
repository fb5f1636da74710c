"""Through the real application: a chat request whose prompt starts like an earlier one is counted as a prefix-cache
hit in the replica's metrics, and the replica records the parts of each request's time to first token."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers.metrics_samples import samples

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m:onnx-int4"
SYSTEM = " ".join(f"Note {i}: the ferry to the island leaves at {i + 6} o'clock." for i in range(12))


def replica_values(exposition: bytes, name: str, **wanted: str) -> float:
    """The sum over onnx-int4's replicas of `name` with the `wanted` labels."""
    return sum(value for (sample, labels), value in samples(exposition).items()
               if sample == name and dict(labels).get("variant") == "onnx-int4"
               and all(dict(labels).get(k) == v for k, v in wanted.items()))


def test_a_shared_prompt_prefix_is_a_counted_hit_and_first_token_parts_are_recorded(serving_app, openai_client):
    def metric(name: str, **labels: str) -> float:
        return replica_values(httpx.get(f"{serving_app}/metrics", timeout=10).content, name, **labels)

    hits = metric("quantserve_replica_prefix_cache_requests_total", result="hit")
    reused = metric("quantserve_replica_prefix_cache_tokens_total", result="reused")
    prefills = metric("quantserve_replica_first_token_seconds_count", stage="prefill")
    for question in ("When does the first ferry leave?", "When does the last ferry leave?"):
        openai_client.chat.completions.create(model=MODEL, max_tokens=4, temperature=0, messages=[
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": question}])
    assert metric("quantserve_replica_prefix_cache_requests_total", result="hit") >= hits + 1
    assert metric("quantserve_replica_prefix_cache_tokens_total", result="reused") - reused > 100  # the system prompt
    assert metric("quantserve_replica_first_token_seconds_count", stage="prefill") == prefills + 2
    for stage in ("template_tokenize", "queue", "first_sample"):
        assert metric("quantserve_replica_first_token_seconds_count", stage=stage) >= 2
