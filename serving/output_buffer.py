"""The outputs of a streamed request's choices between the replicas and the response writer.

One reader per choice puts what its replica sends; the writer takes whatever has piled up since it last took,
each choice's outputs merged into one (GenerationOutput.followed_by). A client that reads slower than the replica
writes thus gets one SSE event for several outputs instead of falling further behind; a fast one gets each output
as it comes. The request's deadline and a choice's failure end the buffer with an error, raised to the writer
after what came before it.
"""

from __future__ import annotations

import asyncio

from serving.engines.base import GenerationOutput


class OutputBuffer:
    def __init__(self, choices: int) -> None:
        self._pending: dict[int, GenerationOutput] = {}  # in order of first arrival since the last take
        self._open = choices
        self._failure: BaseException | None = None
        self._ready = asyncio.Event()

    def put(self, index: int, output: GenerationOutput) -> None:
        pending = self._pending.get(index)
        self._pending[index] = output if pending is None else pending.followed_by(output)
        self._ready.set()

    def end(self, index: int) -> None:
        """Choice `index` has no more outputs."""
        self._open -= 1
        self._ready.set()

    def fail(self, error: BaseException) -> None:
        """End the request with `error` (the first failure wins), once what is pending has been taken."""
        if self._failure is None:
            self._failure = error
        self._ready.set()

    async def take(self) -> list[tuple[int, GenerationOutput]]:
        """(choice index, merged output) for every choice with outputs pending, waiting for one if none is; an
        empty list once every choice has ended; the failure, raised, once nothing is pending."""
        while not self._pending and self._failure is None and self._open > 0:
            self._ready.clear()
            await self._ready.wait()
        if self._pending:
            taken, self._pending = list(self._pending.items()), {}
            return taken
        if self._failure is not None:
            raise self._failure
        return []
