"""SIGTERM drains both of two router replicas (serving/serve_cli.py). The app serves onnx-int4 behind
`router: {replicas: 2}`; its JSON logs, one file per replica, show that both routers are up. The test ends its
application, so it has one of its own. That one key's rate limits hold across two routers is tested on the
application with keys, in test_security.py.
"""

from __future__ import annotations

import os
import signal
import threading

import httpx
import pytest

from tests.helpers import wait_for
from tests.helpers.apps import app_config, both_routers_answer, started_app
from tests.helpers.streams import read_stream

pytestmark = pytest.mark.slow

CHAT = "smollm2-135m"


@pytest.fixture
def draining_routers(built_models, tmp_path_factory):
    """An application of its own (no keys) for the SIGTERM test, which ends it."""
    folder = tmp_path_factory.mktemp("draining-routers")
    server = {"logging": {"dir": str(folder / "logs")}, "drain_timeout_s": 60}
    config = {**app_config(built_models, [f"{CHAT}:onnx-int4"], server), "router": {"replicas": 2}}
    with started_app(config, folder) as app:
        both_routers_answer(app)
        yield app


def test_sigterm_drains_every_router_replica_and_waits_for_the_stream_on_either(draining_routers):
    """After SIGTERM every router refuses new requests (draining one replica would leave the other taking half of
    them), and the stream in flight on one of them runs to its end before the application stops."""
    app, events, started = draining_routers, [], threading.Event()
    body = {"model": CHAT, "prompt": "1, 2, 3, 4, 5, 6,", "temperature": 0, "max_tokens": 400, "stream": True}
    reader = threading.Thread(target=read_stream, args=(app.url, body, events, started), daemon=True)
    reader.start()
    assert started.wait(60), "the stream did not start"
    os.kill(app.process.pid, signal.SIGTERM)
    models = lambda: httpx.get(f"{app.url}/v1/models", timeout=10)  # noqa: E731
    assert wait_for(lambda: models().status_code == 503, 20), "new requests were still taken after SIGTERM"
    answers = [models() for _ in range(12)]  # each goes to either replica
    assert [a.status_code for a in answers] == [503] * 12
    assert {a.json()["error"]["code"] for a in answers} == {"shutting_down"}
    assert all(int(a.headers["retry-after"]) > 0 for a in answers)
    refusals = httpx.get(f"{app.url}/metrics", timeout=10).text  # counted by reason, over both routers' files
    assert any(line.startswith("quantserve_requests_refused_total{") and 'reason="shutting_down"' in line
               for line in refusals.splitlines())
    assert events[-1] != "[DONE]", "the stream ended before the refusals were seen; make it longer"
    reader.join(timeout=120)
    assert events[0] == 200 and events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "length"  # it ran to its end, not cut off
    assert app.process.wait(timeout=120) == 0
    assert "quantserve: drained" in app.log_tail(20000)
