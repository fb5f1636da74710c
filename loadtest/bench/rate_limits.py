"""What sharing the rate-limit buckets costs a request: the admission of a limited key in the router process
(`RateLimiter`, one router) against the awaited call to the RateLimitStore deployment (`SharedRateLimiter`, more
than one router), and against a plain Ray actor holding the same buckets (the alternative to a Serve deployment).

    python -m loadtest.bench.rate_limits [--calls 2000]

Starts its own Ray node on 127.0.0.1 with Serve's throughput-optimized data plane (quantserve's default), runs
the three paths interleaved from inside a Serve replica (where the router runs them), and prints each path's
p50 and p99 in microseconds as JSON, with the node's load average at the start (the figures move with it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from loadtest.cost import percentile
from quantserve.config import RateLimitConfig
from serving.launcher import free_port

LIMITS = {"rate_limits": {"requests_per_minute": 10**9}}  # never refused: only the cost is measured
KEY = "key-bench"


def deployments():
    import ray
    from ray import serve

    from serving.rate_limit_store import RateLimitStore
    from serving.rate_limits import RateLimiter, SharedRateLimiter

    @ray.remote(num_cpus=0)
    class ActorStore:
        def __init__(self) -> None:
            self.limiter = RateLimiter(RateLimitConfig(**LIMITS["rate_limits"]))

        async def admit(self, key_id: str) -> dict:
            return self.limiter.admit(key_id)

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Caller:
        def __init__(self, store) -> None:
            local = RateLimiter(RateLimitConfig(**LIMITS["rate_limits"]))
            self.actor = ActorStore.remote()  # held: an actor lives as long as a handle to it
            self.paths = {"in_process": local.allow, "serve_deployment": SharedRateLimiter(store, local).allow,
                          "ray_actor": self.actor.admit.remote}

        async def measure(self, calls: int) -> dict[str, list[float]]:
            seconds = {name: [] for name in self.paths}
            for index in range(calls + 100):  # the first 100 warm up
                for name, path in self.paths.items():
                    started = time.perf_counter()
                    await path(KEY)
                    if index >= 100:
                        seconds[name].append(time.perf_counter() - started)
            return seconds

    return Caller.bind(RateLimitStore.bind(LIMITS))


async def measure(calls: int) -> dict[str, list[float]]:
    from ray import serve

    handle = serve.run(deployments(), name="bench-rate-limits", route_prefix=None)
    try:
        return await handle.measure.remote(calls)
    finally:
        await serve.shutdown_async()  # in the loop the handle lives in


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    os.environ.setdefault("RAY_SERVE_THROUGHPUT_OPTIMIZED", "1")
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray
    from ray import serve

    load = os.getloadavg()[0]
    ray.init(address="local", include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             num_cpus=2)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        seconds = asyncio.run(measure(args.calls))
    finally:
        ray.shutdown()
    report = {name: {"calls": len(values), "p50_us": round(percentile(values, 50) * 1e6, 1),
                     "p99_us": round(percentile(values, 99) * 1e6, 1)} for name, values in seconds.items()}
    print(json.dumps({"load_average_1m": round(load, 2), "cpus": os.cpu_count(), **report}, indent=2))


if __name__ == "__main__":
    main()
