"""`/metrics` rendered away from the router's event loop.

Merging every process's multiprocess files takes tens of milliseconds of Python, which, on the router's event loop
(or in a thread of its process, holding the GIL), would stall every stream for as long. In multiprocess mode the
router asks a child process of its own instead (`python -m serving.metrics_renderer`: one line in, the length then
the exposition out) and awaits the answer on pipes; without multiprocess mode, the one registry is rendered in a
thread.
"""

from __future__ import annotations

import asyncio
import os
import sys

from serving.metrics import multiprocess_dir, render_metrics

RENDER_TIMEOUT_SECONDS = 30.0
RENDER_NICENESS = 10


class MetricsRenderer:
    """The router's renderer: one child process, started on the first scrape, restarted if it dies or hangs."""

    def __init__(self) -> None:
        self._child: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()  # one scrape at a time on the pipes

    async def render(self) -> bytes:
        if multiprocess_dir() is None:
            return await asyncio.to_thread(render_metrics)
        async with self._lock:
            try:
                return await asyncio.wait_for(self._ask(), RENDER_TIMEOUT_SECONDS)
            except BaseException:
                self.close()  # a child in an unknown state: the next scrape starts a new one
                raise

    async def _ask(self) -> bytes:
        if self._child is None or self._child.returncode is not None:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
            self._child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "serving.metrics_renderer", stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, env=env)
        self._child.stdin.write(b"\n")
        await self._child.stdin.drain()
        size = int(await self._child.stdout.readline())
        return await self._child.stdout.readexactly(size)

    def close(self) -> None:
        if self._child is not None and self._child.returncode is None:
            self._child.kill()
        self._child = None


def serve_renders() -> None:
    """The child's loop: for each line on stdin, the exposition's length on a line, then the exposition.

    It runs at a lower CPU priority: on a node whose cores are all busy serving, a scrape waits for a free moment
    rather than taking a core from a replica's model thread or the router."""
    os.nice(RENDER_NICENESS)
    out = sys.stdout.buffer
    for _ in sys.stdin.buffer:
        try:
            exposition = render_metrics()
        except Exception as exc:  # a file being written as it was read: say so in the scrape, keep serving
            exposition = f"# render failed: {exc!r}\n".encode()
        out.write(b"%d\n" % len(exposition))
        out.write(exposition)
        out.flush()


if __name__ == "__main__":
    serve_renders()
