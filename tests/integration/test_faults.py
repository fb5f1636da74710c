"""Faults against the real application: a replica process killed with SIGKILL while it serves. onnx-int4 falls back
to gptq-int4 (quantserve.yaml). A SIGTERM to `quantserve serve`, which must drain in-flight requests on every router
replica, is tested in test_router_replicas.py (with two routers, which a single one would not show).
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import psutil
import pytest

from loadtest.soak import serve_processes
from tests.helpers import wait_for
from tests.helpers.apps import app_config, started_app
from tests.helpers.streams import read_stream

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m"
INT4, GPTQ = f"{MODEL}:onnx-int4", f"{MODEL}:gptq-int4"
DRAIN_TIMEOUT_SECONDS = 30
COUNTING = {"prompt": "1, 2, 3, 4, 5, 6,", "temperature": 0}  # never meets an end-of-sequence token


@pytest.fixture(scope="module")
def fault_app(built_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fault-app")
    config = app_config(built_models, [INT4, GPTQ], {"drain_timeout_s": DRAIN_TIMEOUT_SECONDS})
    with started_app(config, folder) as app:
        yield app


def start_stream(url: str, body: dict) -> tuple[threading.Thread, list]:
    """A completion stream read in a thread; returns once its first event arrived (the thread and its events)."""
    events, started = [], threading.Event()
    reader = threading.Thread(target=read_stream, args=(url, body, events, started), daemon=True)
    reader.start()
    assert started.wait(30), "the stream did not start"
    return reader, events


def replica_process(app, deployment: str) -> psutil.Process:
    """The Ray Serve replica process of `deployment`, found among the processes this application started."""
    processes = serve_processes(app.process.pid)
    assert deployment in processes, f"no replica process for {deployment}: {sorted(processes)}"
    return processes[deployment][0]


def ready(app) -> dict:
    return httpx.get(f"{app.url}/ready", timeout=10).json()["variants"]


def test_a_killed_replica_ends_its_streams_cleanly_falls_back_and_comes_back(fault_app):
    app = fault_app
    victim = replica_process(app, f"{MODEL}--onnx-int4")
    reader, events = start_stream(app.url, {"model": INT4, "max_tokens": 800, "stream": True, **COUNTING})
    killed_at = time.monotonic()
    victim.send_signal(signal.SIGKILL)

    reader.join(timeout=30)
    assert not reader.is_alive(), "the stream hung after its replica died"
    assert time.monotonic() - killed_at < 30
    assert events[0] == 200 and events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["code"] == "replica_failed" and error["type"] == "server_error"

    answer = httpx.post(f"{app.url}/v1/completions", json={"model": INT4, "prompt": "Hello", "max_tokens": 4},
                        timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-quantserve-variant"] in ("gptq-int4", "onnx-int4")  # the fallback, or a new replica
    assert httpx.get(f"{app.url}/health", timeout=10).status_code == 200  # the router stayed up

    def replaced() -> bool:  # a new replica process, and Serve reporting the variant ready
        new = serve_processes(app.process.pid).get(f"{MODEL}--onnx-int4")
        return bool(new) and new[0].pid != victim.pid and bool(ready(app).get(INT4))

    assert wait_for(replaced, 120, interval=1), "Serve did not bring the killed replica back"
    again = httpx.post(f"{app.url}/v1/completions", json={"model": INT4, "prompt": "Hello", "max_tokens": 4},
                       timeout=60)
    assert again.status_code == 200 and again.headers["x-quantserve-variant"] == "onnx-int4"

