"""serving/rate_limits.py: one key's buckets shared by several router replicas through one store (a stand-in for
the RateLimitStore deployment, which is Ray: tests/integration/test_router_replicas.py starts the real one)."""

from __future__ import annotations

import asyncio

import pytest

from quantserve.config import RateLimitConfig
from serving import protocol as p
from serving import rate_limits
from serving.rate_limits import RateLimiter, SharedRateLimiter
from tests.helpers import HandClock


class Method:
    """`handle.<method>.remote(...)`: counts calls and, like Serve's handle, sends the call at once (a task),
    whether or not anyone awaits its answer."""

    def __init__(self, answer) -> None:
        self.answer, self.calls = answer, 0

    def remote(self, *args):
        self.calls += 1

        async def call():
            return await self.answer(*args)

        return asyncio.ensure_future(call())


class StandInStore:
    """What RateLimitStore does, without Ray: one RateLimiter, refusals returned, not raised."""

    def __init__(self, limiter: RateLimiter) -> None:
        self.limiter = limiter
        self.admit, self.charge = Method(self._admit), Method(self._charge)

    async def _admit(self, key_id: str):
        return self.limiter.admit_or_refusal(key_id)

    async def _charge(self, key_id: str, used: int) -> None:
        self.limiter.charge(key_id, used)


def replicas(limits: RateLimitConfig, count: int = 2, per_key: dict | None = None):
    """`count` router replicas' limiters over one store, all with the same config (and the store's clock)."""
    store = StandInStore(RateLimiter(limits, per_key, clock=HandClock()))
    return store, [SharedRateLimiter(store, RateLimiter(limits, per_key)) for _ in range(count)]


def test_a_keys_request_limit_holds_across_replicas_not_once_per_replica():
    async def scenario():
        store, (first, second) = replicas(RateLimitConfig(requests_per_minute=4))
        remaining = [(await router.allow("k"))["x-ratelimit-remaining-requests"]
                     for router in (first, second, first, second)]
        assert remaining == ["3", "2", "1", "0"]
        for router in (first, second):
            with pytest.raises(p.ApiError) as refused:
                await router.allow("k")
            assert refused.value.status == 429 and "Retry-After" in refused.value.headers

    asyncio.run(scenario())


def test_tokens_used_through_one_replica_hold_back_the_key_at_the_other():
    async def scenario():
        store, (first, second) = replicas(RateLimitConfig(tokens_per_minute=100))
        await first.allow("k")
        first.charge("k", 150)  # sent, not awaited by the request
        await asyncio.gather(*first._charges)
        with pytest.raises(p.ApiError, match="tokens per minute"):
            await second.allow("k")

    asyncio.run(scenario())


def test_a_key_without_limits_costs_no_call_to_the_store():
    async def scenario():
        store, (router, _) = replicas(RateLimitConfig(), per_key={"limited": {"requests_per_minute": 2}})
        assert await router.allow("free") == {}
        router.charge("free", 1000)
        assert (store.admit.calls, store.charge.calls) == (0, 0)
        assert (await router.allow("limited"))["x-ratelimit-remaining-requests"] == "1"
        router.charge("limited", 10)  # no token limit for this key: nothing to send
        assert (store.admit.calls, store.charge.calls) == (1, 0)

    asyncio.run(scenario())


def test_a_store_that_fails_or_hangs_lets_the_request_in(monkeypatch):
    async def broken(_key_id):
        raise RuntimeError("store replica gone")

    async def stuck(_key_id):
        await asyncio.sleep(60)

    async def scenario():
        monkeypatch.setattr(rate_limits, "STORE_TIMEOUT_SECONDS", 0.01)
        for answer in (broken, stuck):
            store, (router, _) = replicas(RateLimitConfig(requests_per_minute=1))
            store.admit = Method(answer)
            assert await router.allow("k") == {}

    asyncio.run(scenario())
