"""Who gets in, before any route runs: draining, body size, API key, rate limits, a place among the requests the
router serves at once (or in its bounded queue); how many are inside; and a count of every refusal.

`AdmissionPolicy` decides (plain code, unit-tested); `AdmissionMiddleware` is the ASGI layer that asks it for
every /v1 request and counts requests until their last byte, streams included, so that a draining server
knows when the last one has finished.
"""

from __future__ import annotations

import asyncio
import logging

from quantserve.config import LimitsConfig
from serving import protocol as p
from serving.auth import ApiKeys
from serving.limits import check_body_size
from serving.metrics import QuantserveMetrics
from serving.rate_limits import RateLimiter, SharedRateLimiter
from serving.responses import error_response

logger = logging.getLogger("ray.serve.quantserve.router")
GUARDED_PREFIX = "/v1/"
RETRY_AFTER_DRAINING = "5"
RETRY_AFTER_QUEUE_FULL = "2"


class RequestGate:
    """At most `concurrent` requests inside the router at once; up to `queued` more wait for a place, in order;
    past that a request is refused at once with 503 (`queue_full`, Retry-After)."""

    def __init__(self, concurrent: int, queued: int) -> None:
        self.places, self.queued, self.waiting = asyncio.Semaphore(concurrent), queued, 0

    async def enter(self) -> None:
        """Take a place, waiting in the queue when all are taken; a 503 ApiError when the queue is full too."""
        if self.places.locked() and self.waiting >= self.queued:
            raise p.ApiError(503, f"the server is at capacity and {self.waiting} requests are queued; retry shortly",
                             code="queue_full", headers={"Retry-After": RETRY_AFTER_QUEUE_FULL})
        self.waiting += 1
        try:
            await self.places.acquire()
        finally:
            self.waiting -= 1

    def leave(self) -> None:
        self.places.release()


class AdmissionPolicy:
    def __init__(self, keys: ApiKeys, limiter: RateLimiter | SharedRateLimiter, limits: LimitsConfig,
                 metrics: QuantserveMetrics | None = None) -> None:
        self.keys, self.limiter, self.limits, self.metrics = keys, limiter, limits, metrics
        self.gate = RequestGate(limits.max_concurrent_requests, limits.max_queued_requests)
        self.draining = False
        self.in_flight = 0

    async def admit(self, method: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        """(key id, response headers) for a request that may go on; an ApiError otherwise. The rate limit is the
        last check and the only one that may wait (on the shared store, when there is more than one router)."""
        if self.draining:
            raise p.ApiError(503, "the server is shutting down; retry on another replica", code="shutting_down",
                             headers={"Retry-After": RETRY_AFTER_DRAINING})
        if method == "POST":
            check_body_size(headers.get("content-length"), self.limits)
        key_id = self.keys.authenticate(headers.get("authorization"))
        return key_id, await self.limiter.allow(key_id)

    def refused(self, endpoint: str, error: p.ApiError) -> None:
        """Count a request refused before any model ran (here, or by the route's checks of its body)."""
        if self.metrics is not None:
            self.metrics.record_refusal(endpoint, error.status, error.code or "refused")


class BodyTooLarge(Exception):
    pass


async def read_body(receive, limit: int) -> bytes:
    """The whole request body, counted as it arrives (a chunked body has no Content-Length to check first);
    BodyTooLarge as soon as it passes `limit` bytes."""
    body, more = bytearray(), True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":  # the client left: what arrived fails to parse, to nobody
            break
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def replaying(body: bytes, receive):
    """A `receive` that gives the app the body read already, then the connection's own messages (disconnects)."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class AdmissionMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware), so that a streamed response counts as in flight until it ends."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        policy: AdmissionPolicy | None = getattr(scope["app"].state, "admission", None) \
            if scope["type"] == "http" else None
        if policy is None or not scope["path"].startswith(GUARDED_PREFIX):
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            key_id, extra_headers = await policy.admit(scope["method"], headers)
            if scope["method"] == "POST" and "content-length" not in headers:
                receive = await self._read(policy, receive)
            await policy.gate.enter()
        except p.ApiError as exc:
            if exc.status == 401:
                logger.warning("refused %s %s: %s", scope["method"], scope["path"], exc.message)
            policy.refused(scope["path"], exc)
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["key_id"] = key_id
        policy.in_flight += 1
        try:
            await self.app(scope, receive, _with_headers(send, extra_headers))
        finally:
            policy.in_flight -= 1
            policy.gate.leave()

    @staticmethod
    async def _read(policy: AdmissionPolicy, receive):
        limit = policy.limits.max_body_bytes
        try:
            return replaying(await read_body(receive, limit), receive)
        except BodyTooLarge:
            raise p.ApiError(413, f"the request body has more than {limit} bytes; this server accepts at most "
                                  f"{limit}", code="request_too_large") from None


def _with_headers(send, extra: dict[str, str]):
    if not extra:
        return send
    encoded = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]

    async def sender(message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *encoded]}
        await send(message)

    return sender
