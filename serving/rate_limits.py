"""Per-key limits on requests per minute and tokens per minute, as token buckets in the router.

A request is let in when its key's request bucket holds a whole request and its token bucket at least one
token; the tokens it used (prompt + completion) are charged once it has finished, so a long answer may push
the bucket below zero and hold the next request back until it has refilled. A refused request gets
429 with `Retry-After`: the seconds until it would be let in. The buckets live in one router process; with
several router replicas each enforces the limits on its own share of the traffic. Keys are the configured
ones (or the one anonymous caller), so the table stays small.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from quantserve.config import RateLimitConfig
from serving import protocol as p


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
