"""A stuck engine found and its requests ended, so that Serve replaces the replica.

`ProgressWatch` sees an engine's counters (tokens generated, seconds in steps) each time it is asked: an engine
with work waiting whose counters have not moved for `timeout_s` is stalled. The replica's health check then fails
(Serve restarts the replica after three failed checks), its requests in flight end with a 503 and new ones are
refused with one, so nothing waits on the stuck thread and Serve's graceful stop is not held up by them.

`QUANTSERVE_TEST_WEDGE` is a test-only setting, unset (off) in service: when it names a variant (`model:variant`),
that variant's ONNX replicas block their model thread forever at the first token of a request whose prompt holds
WEDGE_MARKER. The tests use it to wedge a replica on purpose.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import AsyncIterator, Callable

from serving.protocol import ApiError

WEDGE_ENV = "QUANTSERVE_TEST_WEDGE"
WEDGE_MARKER = "<wedge the model thread>"


class ProgressWatch:
    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout_s, self.clock = timeout_s, clock
        self.last: tuple | None = None
        self.progressed_at = clock()
        self.waiting = 0

    def observe(self, stats) -> None:
        """Take the engine's stats (serving.engines.base.EngineStats): moved counters or no work is progress."""
        mark = (stats.generated_tokens_total, stats.busy_seconds_total)
        self.waiting = stats.running + stats.waiting
        if mark != self.last or not self.waiting:
            self.progressed_at = self.clock()
        self.last = mark

    def stalled_for(self) -> float | None:
        """Seconds without progress while work waited, once past the timeout; None while the engine is fine."""
        idle = self.clock() - self.progressed_at
        return idle if idle > self.timeout_s else None


class StallGuard:
    """Ends a replica's requests with a 503 once its engine is found stalled (`trip`), and refuses new ones."""

    def __init__(self) -> None:
        self.tripped: asyncio.Event | None = None  # made on the replica's event loop, at first use
        self.reason = ""

    def _event(self) -> asyncio.Event:
        if self.tripped is None:
            self.tripped = asyncio.Event()
        return self.tripped

    def trip(self, reason: str) -> None:
        self.reason = reason
        self._event().set()

    def error(self) -> ApiError:
        return ApiError(503, f"this replica's engine is stuck ({self.reason}); Serve is replacing it, retry shortly",
                        code="replica_stalled", headers={"Retry-After": "2"})

    async def guarded(self, outputs: AsyncIterator) -> AsyncIterator:
        """`outputs` as they come, until the guard trips: then the engine's stream is cancelled (which aborts the
        request there) and the 503 is raised."""
        tripped = asyncio.ensure_future(self._event().wait())
        try:
            while not tripped.done():
                step = asyncio.ensure_future(anext(outputs))
                await asyncio.wait({step, tripped}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    step.cancel()
                    break
                try:
                    yield step.result()
                except StopAsyncIteration:
                    return
            raise self.error()
        finally:
            tripped.cancel()


def wedge_hook(variant_id: str, tokenizer) -> Callable | None:
    """The batcher's fault hook for QUANTSERVE_TEST_WEDGE (see the module docstring); None unless it names
    `variant_id`."""
    if os.environ.get(WEDGE_ENV) != variant_id:
        return None
    forever = threading.Event()

    def hook(sequence) -> None:
        if not sequence.generated and WEDGE_MARKER in tokenizer.decode(sequence.prompt_ids):
            forever.wait()

    return hook
