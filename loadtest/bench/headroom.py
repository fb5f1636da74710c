"""Load-generator headroom: how many requests (and streamed chunks) per second the Locust setup of the load tests
can drive, against a trivial loopback endpoint that answers each chat request with a canned stream at once.

If that is far above what the load tests measured against quantserve, their results are not client-bound.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

from loadtest.cost import Slo
from loadtest.records import RequestRecord
from loadtest.runner import StepSettings, StepSpec, run_step

CHUNKS = 16  # output chunks per canned answer


def canned_stream_app():
    """A Starlette app answering POST /v1/chat/completions with CHUNKS one-token chunks, usage and [DONE]."""
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    from serving.engines.base import GenerationOutput
    from serving.responses import ChunkWriter

    async def chat(request):
        body = await request.json()
        writer = ChunkWriter("chatcmpl-canned", body.get("model", "canned"), chat=True, include_usage=True)

        async def events():
            for chunk in writer.first(1):
                yield chunk
            for index in range(CHUNKS):
                yield writer.chunk(0, GenerationOutput(text=" x", token_ids=[1], prompt_tokens=8,
                                                       completion_tokens=index + 1,
                                                       finish_reason="length" if index == CHUNKS - 1 else None))
            for chunk in writer.last():
                yield chunk

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@contextlib.contextmanager
def canned_server():
    """The canned app on a free loopback port, in a thread of this process; yields its base URL."""
    import uvicorn

    from serving.launcher import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(canned_stream_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def bench_headroom(levels: list[int], seconds: float, folder: Path) -> list[dict]:
    rows = []
    with canned_server() as url:
        for users in levels:
            settings = StepSettings(target=url, endpoint="chat", mode="users", warmup_s=1, duration_s=seconds,
                                    max_requests=1_000_000, rate_users=users, prompts="short", max_tokens=str(CHUNKS),
                                    slo=Slo(), seed=0)
            step = StepSpec(settings, "canned", label="canned", level=users, folder=folder / f"headroom-{users}")
            records: list[RequestRecord] = [r for r in run_step(step, progress=lambda _: None)
                                            if r.phase == "measure"]
            ok = [r for r in records if r.ok]
            window = max(r.end_s for r in records) - min(r.start_s for r in records) if records else 0
            rows.append({"users": users, "requests_per_s": len(ok) / window if window else 0.0,
                         "chunks_per_s": sum(r.chunks for r in ok) / window if window else 0.0,
                         "errors": len(records) - len(ok)})
    return rows
