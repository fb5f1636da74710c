"""What the router measures of one request: in flight while it runs, token timing as outputs arrive, then one
metrics record and one rate-limit charge when its response is complete or has failed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import ExitStack

from serving.catalog import ServedVariant
from serving.metrics import QuantserveMetrics, RequestLabels
from serving.protocol import ApiError
from serving.token_clock import TokenClock

CLIENT_CLOSED = 499


class RequestMeter:
    """One request's measurements, for generations and embeddings alike.

    The in-flight gauge is held from creation until `finish`, which records the request once (later calls do
    nothing) and charges its tokens to `charge` (the caller's rate limit), as the response's usage counts them.
    """

    def __init__(self, metrics: QuantserveMetrics, endpoint: str, requested: ServedVariant,
                 charge: Callable[[int], None] | None = None) -> None:
        self.metrics, self.endpoint, self.charge = metrics, endpoint, charge
        self.arrival = time.monotonic()
        self.clock = TokenClock(self.arrival)  # time to first token and the gaps after it
        self._in_flight = ExitStack()  # the gauge's hold, released by finish()
        self._in_flight.enter_context(metrics.request_in_flight(self.labels(requested)))
        self.finished = False

    def labels(self, variant: ServedVariant) -> RequestLabels:
        return RequestLabels(variant.model, variant.variant, variant.backend, self.endpoint)

    def finish(self, status: int, variant: ServedVariant, *, prompt_tokens: int = 0, generated_tokens: int = 0,
               replica_seconds: float = 0.0, queue_seconds: float | None = None) -> None:
        """Record the request, labelled with the variant that answered (or failed), and charge its tokens."""
        if self.finished:
            return
        self.finished = True
        self._in_flight.close()
        self.metrics.record_request(
            self.labels(variant), status_code=status, e2e_seconds=time.monotonic() - self.arrival,
            ttft_seconds=self.clock.first_token_seconds, inter_token_seconds=self.clock.gaps,
            queue_wait_seconds=queue_seconds, prompt_tokens=prompt_tokens, generated_tokens=generated_tokens,
            replica_seconds=replica_seconds, price_per_hour=variant.price_per_hour,
        )
        if self.charge is not None:
            self.charge(prompt_tokens + generated_tokens)


def recorded_status(failure: BaseException | None) -> int:
    """The status a request is recorded with: 200, an ApiError's own, 499 when the client left, else 500."""
    if failure is None:
        return 200
    if isinstance(failure, asyncio.CancelledError | GeneratorExit):
        return CLIENT_CLOSED
    return failure.status if isinstance(failure, ApiError) else 500
