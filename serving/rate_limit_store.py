"""The one place every router replica's rate-limit buckets live when the router runs more than one replica.

A small Ray Serve deployment with a single replica holding a RateLimiter (serving/rate_limits.py). It reads the
keys' own limits itself, from the same server config and key sources as the router, so keys never travel
through Ray; the router sends only key ids. Its state is in memory: when Serve restarts it, every key starts
with a full allowance again, and the routers let requests in meanwhile (SharedRateLimiter fails open).
"""

from __future__ import annotations

from ray import serve

from quantserve.config import ServerConfig
from serving import protocol as p
from serving.auth import ApiKeys, read_keys
from serving.loopback import keep_serve_grpc_on_loopback
from serving.rate_limits import RateLimiter

DEPLOYMENT_NAME = "RateLimitStore"


@serve.deployment(name=DEPLOYMENT_NAME, num_replicas=1, ray_actor_options={"num_cpus": 0},
                  max_ongoing_requests=4096, graceful_shutdown_wait_loop_s=1)
class RateLimitStore:
    """`admit` and `charge` of RateLimiter for every router replica; a refusal is returned, not raised, so that
    it reaches the router as the ApiError it is (not wrapped in Ray's task error)."""

    def __init__(self, server: dict) -> None:
        keep_serve_grpc_on_loopback()
        config = ServerConfig.model_validate(server)
        self.limiter = RateLimiter(config.rate_limits, ApiKeys(read_keys(config.auth)).limits)

    async def admit(self, key_id: str) -> dict[str, str] | p.ApiError:
        return self.limiter.admit_or_refusal(key_id)

    async def charge(self, key_id: str, used_tokens: int) -> None:
        self.limiter.charge(key_id, used_tokens)
