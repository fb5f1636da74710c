"""Log records written by a thread, so that the event loop never waits on a log file or a pipe.

`log_off_loop` moves a logger's handlers behind a queue: a record is prepared (message formatted, `context`
filters run, e.g. Ray Serve's request id, which lives in the calling task's context) and put on the queue; a
listener thread hands it to the handlers.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Sequence
from logging.handlers import QueueHandler, QueueListener


class ContextQueueHandler(QueueHandler):
    """A QueueHandler that first runs `context` filters in the caller's thread (they read its context)."""

    def __init__(self, records: queue.SimpleQueue, context: Sequence[logging.Filter] = ()) -> None:
        super().__init__(records)
        self.context = list(context)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        for context_filter in self.context:
            context_filter.filter(record)
        return super().prepare(record)


def log_off_loop(logger: logging.Logger, context: Sequence[logging.Filter] = ()) -> QueueListener | None:
    """Put `logger`'s handlers behind a queue and a listener thread (started); None if it has no handler to move,
    or they already are. Stop the listener to flush what is queued."""
    handlers = [h for h in logger.handlers if not isinstance(h, QueueHandler)]
    if not handlers or len(handlers) != len(logger.handlers):
        return None
    records: queue.SimpleQueue = queue.SimpleQueue()
    listener = QueueListener(records, *handlers, respect_handler_level=True)
    logger.handlers = [ContextQueueHandler(records, context)]
    listener.start()
    return listener
