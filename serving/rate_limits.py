"""Per-key limits on requests per minute and tokens per minute, as token buckets in the router.

A request is let in when its key's request bucket holds a whole request and its token bucket at least one
token; the tokens it used (prompt + completion) are charged once it has finished, so a long answer may push
the bucket below zero and hold the next request back until it has refilled. A refused request gets
429 with `Retry-After`: the seconds until it would be let in. Keys are the configured ones (or the one anonymous
caller), so the table stays small.

Where the buckets live: with one router replica (the default), in the router process (`RateLimiter`, no call
leaves it). When the router may run more than one replica, in one `RateLimitStore` deployment
(serving/rate_limit_store.py) that every replica asks (`SharedRateLimiter`), so a key's limit holds overall
instead of once per replica. README, "Configuration", says why a shared store and not a split of each budget.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from quantserve.config import RateLimitConfig
from serving import protocol as p

logger = logging.getLogger("ray.serve.quantserve.router")
# A store that has not answered by then lets the request in (see SharedRateLimiter).
STORE_TIMEOUT_SECONDS = 2.0


@dataclass
class TokenBucket:
    """`capacity` units, refilled at `capacity` per minute; the level may go below zero (debt)."""

    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.capacity / 60.0)
        self.updated = now

    def seconds_until(self, level: float) -> float:
        return max(level - self.level, 0.0) * 60.0 / self.capacity


@dataclass
class KeyBuckets:
    requests: TokenBucket | None
    tokens: TokenBucket | None


class RateLimiter:
    """`config` applies to every key; `per_key` (key id -> RateLimitConfig fields) overrides it for some."""

    def __init__(self, config: RateLimitConfig, per_key: dict[str, dict] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config, self.clock = config, clock
        self.per_key = {key: RateLimitConfig.model_validate({**config.model_dump(), **limits})
                        for key, limits in (per_key or {}).items()}
        self.buckets: dict[str, KeyBuckets] = {}

    def limits(self, key_id: str) -> RateLimitConfig:
        return self.per_key.get(key_id, self.config)

    def _buckets(self, key_id: str) -> KeyBuckets:
        now = self.clock()
        buckets = self.buckets.get(key_id)
        if buckets is None:
            def bucket(limit: int | None) -> TokenBucket | None:
                return TokenBucket(limit, limit, now) if limit else None

            limits = self.limits(key_id)
            buckets = KeyBuckets(bucket(limits.requests_per_minute), bucket(limits.tokens_per_minute))
            self.buckets[key_id] = buckets
        for one in (buckets.requests, buckets.tokens):
            if one is not None:
                one.refill(now)
        return buckets

    async def allow(self, key_id: str) -> dict[str, str]:
        """`admit`, as the router's admission awaits it (the shared limiter's has a call to make)."""
        return self.admit(key_id)

    def admit(self, key_id: str) -> dict[str, str]:
        """Take one request from the key's allowance; the x-ratelimit-* headers, or a 429 ApiError."""
        buckets = self._buckets(key_id)
        requests, tokens = buckets.requests, buckets.tokens
        if tokens is not None and tokens.level < 1:
            raise self._refusal("tokens per minute", tokens.capacity, tokens.seconds_until(1))
        if requests is not None and requests.level < 1:
            raise self._refusal("requests per minute", requests.capacity, requests.seconds_until(1))
        if requests is not None:
            requests.level -= 1
        return self.headers(buckets)

    def admit_or_refusal(self, key_id: str) -> dict[str, str] | p.ApiError:
        """`admit`, with a refusal returned instead of raised: what the shared store sends back to a router, so that
        it arrives as the ApiError it is (not wrapped in Ray's task error)."""
        try:
            return self.admit(key_id)
        except p.ApiError as refusal:
            return refusal

    def charge(self, key_id: str, used_tokens: int) -> None:
        """Count a finished request's tokens against its key."""
        tokens = self._buckets(key_id).tokens
        if tokens is not None and used_tokens > 0:
            tokens.level -= used_tokens

    def headers(self, buckets: KeyBuckets) -> dict[str, str]:
        """OpenAI's rate-limit headers for what the key has left."""
        headers = {}
        for name, bucket in (("requests", buckets.requests), ("tokens", buckets.tokens)):
            if bucket is not None:
                headers[f"x-ratelimit-limit-{name}"] = str(int(bucket.capacity))
                headers[f"x-ratelimit-remaining-{name}"] = str(max(int(bucket.level), 0))
        return headers

    @staticmethod
    def _refusal(what: str, limit: float, wait: float) -> p.ApiError:
        retry_after = max(1, math.ceil(wait))
        return p.ApiError(429, f"Rate limit reached: this key may use {limit:g} {what}; retry in {retry_after} s",
                          code="rate_limit_exceeded", headers={"Retry-After": str(retry_after)})


class SharedRateLimiter:
    """The router's side of the shared buckets: `store` is the RateLimitStore's deployment handle, `local` knows
    each key's limits (from the same config and keys), so a key without any costs no call.

    Admission awaits the store's answer (one handle call per request of a limited key); a finished request's
    tokens are sent without waiting. A store that fails or does not answer within STORE_TIMEOUT_SECONDS lets the
    request in, with a warning in the log: a limit is a guard on cost, and failing open while Serve restarts the
    store (Envoy's global rate limit does the same by default) keeps the API up."""

    def __init__(self, store, local: RateLimiter) -> None:
        self.store, self.local = store, local
        self._charges: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    def limited(self, key_id: str) -> RateLimitConfig | None:
        limits = self.local.limits(key_id)
        return limits if limits.requests_per_minute or limits.tokens_per_minute else None

    async def allow(self, key_id: str) -> dict[str, str]:
        """The store's x-ratelimit-* headers for the key, or its 429 ApiError raised here."""
        if self.limited(key_id) is None:
            return {}
        try:
            answer = await asyncio.wait_for(self.store.admit.remote(key_id), STORE_TIMEOUT_SECONDS)
        except Exception as exc:  # any failure of the store: fail open, logged
            logger.warning("rate-limit store did not answer (%s: %s); request of %s let in", type(exc).__name__,
                           exc, key_id)
            return {}
        if isinstance(answer, p.ApiError):
            raise answer
        return answer

    def charge(self, key_id: str, used_tokens: int) -> None:
        limits = self.limited(key_id)
        if limits is not None and limits.tokens_per_minute and used_tokens > 0:
            task = asyncio.get_running_loop().create_task(self._send_charge(key_id, used_tokens))
            self._charges.add(task)  # nobody waits for the store's bookkeeping
            task.add_done_callback(self._charges.discard)

    async def _send_charge(self, key_id: str, used_tokens: int) -> None:
        try:
            await asyncio.wait_for(self.store.charge.remote(key_id, used_tokens), STORE_TIMEOUT_SECONDS)
        except Exception as exc:  # the tokens go uncounted, as with a restarted store
            logger.warning("rate-limit store did not take %d tokens of %s (%s: %s)", used_tokens, key_id,
                           type(exc).__name__, exc)
