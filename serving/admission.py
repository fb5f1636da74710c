"""Who gets in, before any route runs: draining, body size, API key, rate limits; and how many are inside.

`AdmissionPolicy` decides (plain code, unit-tested); `AdmissionMiddleware` is the ASGI layer that asks it for
every /v1 request and counts requests until their last byte, streams included, so that a draining server
knows when the last one has finished.
"""

from __future__ import annotations

import logging

from quantserve.config import LimitsConfig
from serving import protocol as p
from serving.auth import ApiKeys
from serving.limits import check_body_size
from serving.rate_limits import RateLimiter
from serving.responses import error_response

logger = logging.getLogger("ray.serve.quantserve.router")
GUARDED_PREFIX = "/v1/"
RETRY_AFTER_DRAINING = "5"


class AdmissionPolicy:
    def __init__(self, keys: ApiKeys, limiter: RateLimiter, limits: LimitsConfig) -> None:
        self.keys, self.limiter, self.limits = keys, limiter, limits
        self.draining = False
        self.in_flight = 0

    def admit(self, method: str, headers: dict[str, str]) -> tuple[str, dict[str, str]]:
        """(key id, response headers) for a request that may go on; an ApiError otherwise."""
        if self.draining:
            raise p.ApiError(503, "the server is shutting down; retry on another replica", code="shutting_down",
                             headers={"Retry-After": RETRY_AFTER_DRAINING})
        if method == "POST":
            check_body_size(headers.get("content-length"), self.limits)
        key_id = self.keys.authenticate(headers.get("authorization"))
        return key_id, self.limiter.admit(key_id)


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
            key_id, extra_headers = policy.admit(scope["method"], headers)
        except p.ApiError as exc:
            if exc.status == 401:
                logger.warning("refused %s %s: %s", scope["method"], scope["path"], exc.message)
            await error_response(exc)(scope, receive, send)
            return
        scope.setdefault("state", {})["key_id"] = key_id
        policy.in_flight += 1
        try:
            await self.app(scope, receive, _with_headers(send, extra_headers))
        finally:
            policy.in_flight -= 1


def _with_headers(send, extra: dict[str, str]):
    if not extra:
        return send
    encoded = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]

    async def sender(message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *encoded]}
        await send(message)

    return sender
