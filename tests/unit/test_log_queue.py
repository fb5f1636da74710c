"""serving/log_queue.py: records reach the logger's handlers from a thread, with what the caller's context filters
added where the record was made."""

from __future__ import annotations

import logging

from serving.log_queue import log_off_loop


class Recording(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class RequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = "req-1"
        return True


def test_records_go_through_the_queue_with_the_callers_context() -> None:
    logger = logging.getLogger("quantserve-test-log-queue")
    logger.propagate, logger.level = False, logging.INFO
    handler = Recording()
    logger.handlers = [handler]
    listener = log_off_loop(logger, [RequestId()])
    assert listener is not None and log_off_loop(logger) is None  # moved once
    try:
        logger.info("%s for %s", "/v1/chat/completions", "m:v")
    finally:
        listener.stop()
    [record] = handler.records
    assert record.getMessage() == "/v1/chat/completions for m:v" and record.request_id == "req-1"
