"""Sample traffic for serving/metrics.py, recorded in this process or in child processes (as Ray replicas do),
and readers for the exposition that comes out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from prometheus_client.parser import text_string_to_metric_families

from serving.metrics import QuantserveMetrics, ReplicaLabels, RequestLabels

CHAT = RequestLabels("smollm2", "onnx-int4", "onnx", "/v1/chat/completions")
REQUEST = dict(status_code=200, e2e_seconds=1.2, ttft_seconds=0.3, inter_token_seconds=[0.02, 0.03],
               queue_wait_seconds=0.05, prompt_tokens=12, generated_tokens=3, replica_seconds=0.5, price_per_hour=0.72)
CHILD_TIMEOUT_SECONDS = 30

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
    """A child process that records `requests` requests and holds one in flight until `finish`."""
    job = {"labels": [CHAT.model, CHAT.variant, CHAT.backend, CHAT.endpoint], "request": REQUEST,
           "requests": requests, "replica": replica, "running": running, "crash": crash}
    child = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(job)], env={**os.environ, **multiproc_env},
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "recorded\n"
    return child


def finish(child: subprocess.Popen) -> None:
    child.communicate("\n", timeout=CHILD_TIMEOUT_SECONDS)
    assert child.returncode == 0


def record_sample_traffic(metrics: QuantserveMetrics, requests: int) -> None:
    for i in range(requests):
        metrics.record_request(CHAT, **{**REQUEST, "ttft_seconds": 0.1 * (i % 5 + 1)})
    metrics.record_request(CHAT, status_code=503, e2e_seconds=0.01)
    replica = ReplicaLabels(CHAT.model, CHAT.variant, CHAT.backend, "r1")
    metrics.replica_started(replica, price_per_hour=REQUEST["price_per_hour"])
    metrics.record_replica_step(replica, generated_tokens=4, step_seconds=0.1)


def samples(exposition: bytes) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(exposition.decode()) for s in family.samples}


def value(exposition: bytes, name: str, **labels: str) -> float | None:
    return samples(exposition).get((name, frozenset(labels.items())))


def request_labels(**extra: str) -> dict[str, str]:
    return {"model": CHAT.model, "variant": CHAT.variant, "backend": CHAT.backend, "endpoint": CHAT.endpoint, **extra}


def replica_labels(replica: str) -> dict[str, str]:
    return {"model": CHAT.model, "variant": CHAT.variant, "backend": CHAT.backend, "replica": replica}
