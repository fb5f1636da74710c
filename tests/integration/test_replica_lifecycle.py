"""Capacity, readiness and replacement of replicas in one application of its own (destructive tests: a replica
killed, a model thread wedged, the application redeployed). Each test waits for the state it needs first, so none
depends on running order.

The application: onnx-int4 (the default) with two replicas of one batch slot each, falling back to onnx-int8;
onnx-int8 falling back to onnx-int4; gptq-int4 scaled to zero (`min_replicas: 0`) with no fallback; the router
works on 2 requests at once and queues 1 more. QUANTSERVE_TEST_WEDGE names onnx-int8, whose model thread a prompt
holding WEDGE_MARKER blocks; `stall_timeout_s` is short.

Each test failed on the previous code, as its docstring says.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import httpx
import psutil
import pytest
import yaml

from loadtest.soak import REPLICA_TITLE, deployment_of
from serving.stall import WEDGE_ENV, WEDGE_MARKER
from tests.helpers import REPO, wait_for
from tests.helpers.apps import app_config, started_app

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
INT4, INT8, GPTQ = f"{MODEL}:onnx-int4", f"{MODEL}:onnx-int8", f"{MODEL}:gptq-int4"
COUNTING = {"prompt": "1, 2, 3, 4, 5, 6,", "temperature": 0}  # never meets an end-of-sequence token
STALL_TIMEOUT_SECONDS = 5
REQUEST_TIMEOUT_SECONDS = 150
LONG_STREAM_TOKENS = 960  # with the 17-token prompt, within onnx-int4's context of 1,000 or 1,024


def lifecycle_config(models_dir, int4_context: int = 1024) -> dict:
    server = {"limits": {"max_concurrent_requests": 2, "max_queued_requests": 1,
                         "stall_timeout_s": STALL_TIMEOUT_SECONDS, "request_timeout_s": REQUEST_TIMEOUT_SECONDS}}
    config = app_config(models_dir, [INT4, INT8, GPTQ], server)
    serve = {v["name"]: v["serve"] for v in config["models"][0]["variants"]}
    serve["onnx-int4"].update(replicas=2, max_batch_size=1, max_queue=0, fallbacks=["onnx-int8"],
                              max_context=int4_context)
    serve["onnx-int8"].update(fallbacks=["onnx-int4"])
    serve["gptq-int4"].update(autoscaling={"min_replicas": 0, "max_replicas": 1}, fallbacks=[])
    return config


@pytest.fixture(scope="module")
def app(built_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("lifecycle-app")
    with pytest.MonkeyPatch.context() as env:
        env.setenv(WEDGE_ENV, INT8)  # inherited by `quantserve serve`, its Ray cluster and the redeploying driver
        with started_app(lifecycle_config(built_models), folder, variants=[INT4, INT8]) as running:
            running.models_dir = built_models
            yield running


def replicas(app, deployment: str) -> list[psutil.Process]:
    """The replica processes of `deployment` (not their children) among those the application started."""
    found = []
    for process in psutil.Process(app.process.pid).children(recursive=True):
        try:
            title = next((part for part in process.cmdline() if REPLICA_TITLE in part), None)
        except psutil.Error:
            continue
        if title and deployment_of(title) == deployment:
            found.append(process)
    return found


def ready(app) -> httpx.Response:
    return httpx.get(f"{app.url}/ready", timeout=10)


def running(app, variant: str, count: int = 1) -> bool:
    return ready(app).json()["states"][variant] == "running" and len(replicas(app, deployment(variant))) >= count


def deployment(variant: str) -> str:
    return variant.replace(":", "--")


def complete(app, **body) -> httpx.Response:
    return httpx.post(f"{app.url}/v1/completions", json=body, timeout=REQUEST_TIMEOUT_SECONDS + 30)


class Stream:
    """A completion stream read in a thread: its status, data events and whether it has begun."""

    def __init__(self, app, body: dict) -> None:
        self.events: list = []
        self.begun = threading.Event()
        self.thread = threading.Thread(target=self._read, args=(app.url, body), daemon=True)
        self.thread.start()

    def _read(self, url: str, body: dict) -> None:
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_SECONDS + 30) as http, \
                http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
            self.events.append(response.status_code)
            self.headers = response.headers
            for line in response.iter_lines():
                if line.startswith("data: "):
                    data = line.removeprefix("data: ")
                    self.events.append(data if data == "[DONE]" else json.loads(data))
                    self.begun.set()
            self.begun.set()


# --- capacity ------------------------------------------------------------------------------------------------


def test_a_full_replica_passes_the_request_to_another_replica_of_its_variant(app):
    """n=2 sends two choices at once to a variant of two one-slot replicas with no queue: one choice each. Before,
    Serve knew nothing of the engine's capacity (256 requests per replica); the engine refused what it could not
    queue (with max_queue 0, every request) and the refusal sent the request to the fallback variant."""
    assert wait_for(lambda: running(app, INT4, 2), 120, interval=1)
    for _ in range(4):
        answer = complete(app, model=INT4, n=2, max_tokens=6, **COUNTING)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-quantserve-variant"] == "onnx-int4" and "x-quantserve-fallback" not in answer.headers
        assert len(answer.json()["choices"]) == 2


def test_the_router_queue_is_bounded_with_503_and_retry_after(app):
    """Two streams take the router's two places, a third request waits in its queue of one, a fourth is refused at
    once (and counted). Before, the router took every request (up to Serve's 512) and nothing was refused."""
    assert wait_for(lambda: running(app, INT4, 2), 120, interval=1)
    # Streams long enough to hold both places until the fourth request is answered on any machine: 400 tokens ended
    # within that time on a fast one (one stream had begun seconds before the other), and the fourth was let in.
    streams = [Stream(app, {"model": INT4, "max_tokens": LONG_STREAM_TOKENS, **COUNTING}) for _ in range(2)]
    assert all(s.begun.wait(60) for s in streams)
    queued: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: queued.append(complete(app, model=INT8, max_tokens=2, **COUNTING)))
    waiter.start()
    time.sleep(1)  # the third request is in the queue (nothing to observe it by but its absence of an answer)
    assert not queued
    refused = complete(app, model=INT8, max_tokens=2, **COUNTING)
    finished = [stream.events[-1] == "[DONE]" for stream in streams]
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full", (refused.text, finished)
    assert int(refused.headers["retry-after"]) > 0
    metrics = httpx.get(f"{app.url}/metrics", timeout=10).text
    assert 'quantserve_requests_refused_total{code="503",endpoint="/v1/completions",reason="queue_full"}' in metrics
    for stream in streams:
        stream.thread.join(REQUEST_TIMEOUT_SECONDS)
    waiter.join(60)
    assert queued and queued[0].status_code == 200


def test_a_variant_scaled_to_zero_is_ready_to_scale_stays_cold_and_scales_up_on_a_request(app):
    """Before, the router's probe called every deployment each second: a scaled-to-zero variant was woken by the
    probe itself, and reported not ready meanwhile."""
    body = ready(app).json()
    assert body["states"][GPTQ] == "scaled_to_zero" and body["variants"][GPTQ] is True
    time.sleep(5)  # five probes
    assert replicas(app, deployment(GPTQ)) == [], "the probe woke the scaled-to-zero variant"
    answer = complete(app, model=GPTQ, max_tokens=4, **COUNTING)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-quantserve-variant"] == "gptq-int4"
    assert answer.json()["usage"]["completion_tokens"] == 4
    assert wait_for(lambda: ready(app).json()["states"][GPTQ] == "running", 30)


# --- replacement -------------------------------------------------------------------------------------------


def test_ready_stays_200_while_a_non_default_variants_replica_is_killed_and_restarts(app):
    """Before, /ready was 503 while any variant was not ready, so one restarting variant took every pod out."""
    assert wait_for(lambda: running(app, INT8) and running(app, INT4), 120, interval=1)
    victim = replicas(app, deployment(INT8))[0]
    victim.send_signal(signal.SIGKILL)
    seen_down, statuses = False, set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        response = ready(app)
        statuses.add(response.status_code)
        state = response.json()["states"][INT8]
        seen_down = seen_down or state != "running"
        if seen_down and state == "running" and replicas(app, deployment(INT8)):
            break
        time.sleep(0.2)
    assert seen_down, "the killed replica never showed as down"
    assert statuses == {200}, statuses
    assert [p.pid for p in replicas(app, deployment(INT8))] != [victim.pid]
    assert complete(app, model=INT8, max_tokens=2, **COUNTING).headers["x-quantserve-variant"] == "onnx-int8"


def test_a_wedged_model_thread_fails_the_health_check_and_serve_replaces_the_replica(app):
    """The request stuck on the wedged thread is ended (its fallback answers) and Serve replaces the replica.
    Before, an ONNX replica was healthy whatever its model thread did: the request waited out the timeout and the
    replica stayed."""
    assert wait_for(lambda: running(app, INT8) and running(app, INT4), 120, interval=1)
    wedged = replicas(app, deployment(INT8))[0]
    started = time.monotonic()
    answer = complete(app, model=INT8, prompt=f"{WEDGE_MARKER} 1, 2, 3,", max_tokens=4, temperature=0)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-quantserve-variant"] == "onnx-int4"  # the fallback, once the stall was found
    assert time.monotonic() - started < STALL_TIMEOUT_SECONDS + 60
    replaced = lambda: running(app, INT8) and wedged.pid not in [p.pid for p in replicas(app, deployment(INT8))]  # noqa: E731
    assert wait_for(replaced, 120, interval=1), "Serve did not replace the wedged replica"
    again = complete(app, model=INT8, max_tokens=2, **COUNTING)
    assert again.status_code == 200 and again.headers["x-quantserve-variant"] == "onnx-int8"


def test_a_long_stream_survives_a_redeploy_with_a_changed_config(app, tmp_path):
    """Serve replaces the stream's replica and the router; both wait for the stream to end. Before, they were
    killed 10 s (router) or 20 s (Serve's default, replicas) into the update, cutting the stream."""
    assert wait_for(lambda: running(app, INT4, 2) and running(app, INT8), 120, interval=1)
    before = {p.pid for p in replicas(app, deployment(INT4))}
    stream = Stream(app, {"model": INT4, "max_tokens": 900, "stream_options": {"include_usage": True}, **COUNTING})
    assert stream.begun.wait(60)
    changed = lifecycle_config(app.models_dir, int4_context=1000)  # new replica arguments: new replicas
    changed["server"]["limits"]["max_n"] = 7  # new router arguments: a new router
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    result = subprocess.run([sys.executable, "-m", "tests.helpers.redeploy", app.ray_address, str(path)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    stream.thread.join(REQUEST_TIMEOUT_SECONDS + 30)
    assert not stream.thread.is_alive()
    assert stream.events[0] == 200 and stream.events[-1] == "[DONE]", stream.events[-3:]
    assert stream.events[-2]["usage"]["completion_tokens"] == 900, stream.events[-3:]  # all of it, no error event
    assert stream.events[-3]["choices"][0]["finish_reason"] == "length", stream.events[-3]
    assert wait_for(lambda: {p.pid for p in replicas(app, deployment(INT4))}.isdisjoint(before), 60, interval=1)
    refused = complete(app, model=INT4, n=8, max_tokens=2, **COUNTING)  # the new router's limit
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "n"
