"""The Helm chart's application on a real multi-node Ray cluster: a head and a worker node started with `ray start` on
127.0.0.1, the chart's own serveConfigV2 (from `helm template`) deployed through the head's dashboard as KubeRay does,
the replica on the worker, then the worker killed and replaced while the router on the head stays up.

As in the chart, CPU capacity keeps the replica off the head: the head declares 1 CPU (the chart's head declares 0,
which here would leave the router nowhere to run once the worker dies), the replica asks for 2, the worker has 4.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from serving.launcher import free_port
from tests.helpers import REPO, wait_for
from tests.helpers.helm_tools import find, ray_cluster, ray_containers, render_objects
from tests.helpers.ray_nodes import LoopbackCluster, deploy, serve_status

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

VARIANT = "smollm2-135m:onnx-int4"
DEPLOYMENT = "smollm2-135m--onnx-int4"
REQUEST_TIMEOUT_SECONDS = 240  # the router's request timeout: a request may wait this long for a rescheduled replica
READY_TIMEOUT_SECONDS = 300
EXPORTER = REPO / "helm" / "quantserve" / "files" / "metrics_exporter.py"
# What the cluster itself sets (loopback addresses and free ports) instead of the chart's pod values.
OWN_PARAMS = {"dashboard-host", "metrics-export-port"}


def chart_values(models_dir: Path, port: int, metrics_dir: Path) -> dict:
    config = yaml.safe_load((REPO / "quantserve.yaml").read_text())
    config["models_dir"] = str(models_dir)
    config["server"]["limits"] = {"request_timeout_s": REQUEST_TIMEOUT_SECONDS}
    [model] = [m for m in config["models"] if m["name"] == "smollm2-135m"]
    [variant] = [v for v in model["variants"] if v["name"] == "onnx-int4"]
    variant["serve"] = {**variant.get("serve", {}), "num_cpus": 2, "max_context": 1024, "max_batch_size": 4}
    return {
        # Loopback only on this machine (pods bind every interface); no haproxy binary here.
        "serve": {"host": "127.0.0.1", "port": port, "haproxy": False, "variants": [VARIANT]},
        "quantserve": config,
        "head": {"rayStartParams": {"num-cpus": "1"}},
        "cpuWorkers": {"rayStartParams": {"num-cpus": "4"}},
        "monitoring": {"exporter": {"multiprocessDir": str(metrics_dir)}},
        "apiKeys": {"enabled": False},
    }


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def start_params(group: dict) -> dict[str, str]:
    return {k: v for k, v in group["rayStartParams"].items() if k not in OWN_PARAMS}


def placement(cluster: LoopbackCluster) -> dict[str, tuple[str, str]]:
    """Serve's live replica actors: deployment -> (node id, actor id)."""
    from ray.util.state import list_actors

    actors = list_actors(address=cluster.dashboard_url, limit=1000, raise_on_missing_output=False)
    return {a.class_name.rsplit(":", 1)[-1]: (a.node_id, a.actor_id) for a in actors
            if a.state == "ALIVE" and a.class_name.startswith("ServeReplica:quantserve:")}


def log_placement(capsys, cluster: LoopbackCluster, moment: str) -> dict[str, tuple[str, str]]:
    where = placement(cluster)
    names = {node.node_id: node.name for node in cluster.nodes}
    with capsys.disabled():
        print(f"\n[multi-node] replica placement {moment}:")
        for deployment, (node_id, actor_id) in sorted(where.items()):
            print(f"[multi-node]   {deployment:28} on {names.get(node_id, '?'):9} node {node_id[:12]} "
                  f"actor {actor_id[:12]}")
    return where


def app_running(cluster: LoopbackCluster) -> bool:
    try:
        return serve_status(cluster)["applications"]["quantserve"]["status"] == "RUNNING"
    except (httpx.HTTPError, KeyError, ValueError):
        return False


def chat(client: openai.OpenAI) -> str:
    reply = client.chat.completions.create(model=VARIANT, max_tokens=8, temperature=0,
                                           messages=[{"role": "user", "content": "What is the capital of France?"}])
    return reply.choices[0].message.content


class HealthWatch(threading.Thread):
    """GET /health on the head's proxy every half second; every answer's status is kept."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.statuses, self.stopped = url, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.statuses.append(httpx.get(f"{self.url}/health", timeout=5).status_code)
            except httpx.HTTPError as exc:
                self.statuses.append(type(exc).__name__)
            time.sleep(0.5)


def requests_answered(metrics_dir: Path) -> float:
    """quantserve_requests_total{code="200"} of the variant, through the chart's exporter."""
    port = free_port()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    exporter = subprocess.Popen([sys.executable, str(EXPORTER), "--host", "127.0.0.1", "--port", str(port)], cwd=REPO,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert wait_for(lambda: _get(url) is not None, 30)
        families = text_string_to_metric_families(_get(url))
        return sum(s.value for f in families for s in f.samples if s.name == "quantserve_requests_total"
                   and s.labels.get("variant") == "onnx-int4" and s.labels.get("code") == "200")
    finally:
        exporter.terminate()
        exporter.wait(timeout=30)


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.HTTPError:
        return None


def _get(url: str) -> str | None:
    try:
        return httpx.get(url, timeout=5).text
    except httpx.HTTPError:
        return None


def test_chart_application_survives_losing_its_worker_node(built_models: Path, tmp_path: Path, capsys):
    port, metrics_dir = free_port(), tmp_path / "metrics"
    metrics_dir.mkdir()
    objects = render_objects(chart_values(built_models, port, metrics_dir))
    rayservice = find(objects, "RayService")
    head_group, [cpu_group] = ray_cluster(objects)["headGroupSpec"], ray_cluster(objects)["workerGroupSpecs"]
    pod_env = {e["name"]: e["value"] for e in ray_containers(objects)[0]["env"] if e["name"].startswith("RAY_")}
    cluster = LoopbackCluster(tmp_path, pod_env)
    url = f"http://127.0.0.1:{port}"
    try:
        head = cluster.start_head(start_params(head_group))
        # Deployed before the worker joins, as KubeRay submits serveConfigV2 once the head is ready: the router fits
        # on the head, the replica waits for a node with 2 free CPUs.
        deploy(cluster, rayservice["spec"]["serveConfigV2"])
        worker = cluster.start_worker(start_params(cpu_group), "worker-1")
        assert wait_for(lambda: app_running(cluster), READY_TIMEOUT_SECONDS, interval=2), serve_status(cluster)
        # As the pod's readiness probe does: the router's own view of Serve's status (read once a second) may lag
        # the dashboard's, and until it sees the replica it answers 503 with Retry-After.
        assert wait_for(lambda: _status(f"{url}/ready") == 200, 60, interval=1), "the router never became ready"
        before = log_placement(capsys, cluster, "after the deploy")
        assert before[DEPLOYMENT][0] == worker.node_id and before["Router"][0] == head.node_id
        listening = cluster.listening_addresses()
        assert listening and all(is_loopback(address) for address in listening), listening

        # a first request may wait for the replica's first run (and for a loaded CI machine): the router's own timeout
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=REQUEST_TIMEOUT_SECONDS)
        assert "Paris" in chat(client)

        watch = HealthWatch(url)
        watch.start()
        worker.kill_raylet()
        assert wait_for(lambda: worker.node_id not in (cluster.alive_node_ids() or {worker.node_id}), 90, interval=1)
        # A request that arrives while no replica exists: answered 503 with Retry-After (or held), and the client's
        # retries carry it over until Serve has rescheduled the replica on the replacement node.
        patient = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=30, timeout=REQUEST_TIMEOUT_SECONDS)
        answers: list[str] = []
        waiting = threading.Thread(target=lambda: answers.append(chat(patient)), daemon=True)
        waiting.start()
        during = httpx.post(f"{url}/v1/chat/completions", timeout=REQUEST_TIMEOUT_SECONDS + 10, json={
            "model": VARIANT, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})
        with capsys.disabled():
            print(f"[multi-node] a request without retries while the worker is gone: {during.status_code} "
                  f"{during.headers.get('retry-after', '')}")
        assert during.status_code in (200, 503)  # held until a replica came back, or told when to retry

        replacement = cluster.start_worker(start_params(cpu_group), "worker-2")  # KubeRay replaces the pod
        waiting.join(timeout=REQUEST_TIMEOUT_SECONDS + 60)
        assert answers and "Paris" in answers[0]
        after = log_placement(capsys, cluster, "after the worker was replaced")
        assert after[DEPLOYMENT][0] == replacement.node_id
        assert after["Router"] == before["Router"]  # the same router actor, on the head, all along
        assert "Paris" in chat(client)
        watch.stopped.set()
        watch.join(timeout=10)
        assert watch.statuses and set(watch.statuses) == {200}, watch.statuses

        successes = 3 + (during.status_code == 200)
        assert wait_for(lambda: requests_answered(metrics_dir) == successes, 30, interval=2), \
            requests_answered(metrics_dir)
    finally:
        cluster.stop()
