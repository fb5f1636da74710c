"""Router overhead: the same request straight to a replica's deployment handle (from a Ray driver in this process)
and through the router over HTTP (Serve's proxy, the FastAPI ingress, one handle hop), interleaved.

Also GET /health over HTTP (proxy and ingress, no replica), which splits the overhead into the HTTP front and the
extra hop, and streaming: inter-token latency seen through the router against at the handle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid

import httpx

from loadtest.bench.engines import run
from loadtest.cost import percentile
from serving.engines.base import SamplingParams
from serving.protocol import ApiError

PROMPT = "Hello"


def replica_request(max_tokens: int):
    """What the router sends a text replica for POST /v1/completions (serving.generation.Generation._request)."""
    from serving.replicas import GenerationRequest  # imports Ray, which only the benchmark's driver process needs

    return GenerationRequest(f"bench-{uuid.uuid4().hex[:12]}", SamplingParams(max_tokens=max_tokens, temperature=0),
                             prompt=PROMPT)


class Paths:
    """The two ways to the same replica, each returning (seconds, token timestamps)."""

    def __init__(self, url: str, handle, model_id: str) -> None:
        self.url, self.handle, self.model_id = url, handle, model_id
        self.http = httpx.AsyncClient(base_url=url, timeout=60)

    async def direct(self, max_tokens: int) -> tuple[float, list[float]]:
        started, stamps = time.perf_counter(), []
        async for output in self.handle.options(stream=True).generate.remote(replica_request(max_tokens)):
            if isinstance(output, ApiError):
                raise output
            stamps += [time.perf_counter()] * max(len(output.token_ids), 1)
        return time.perf_counter() - started, stamps

    async def routed(self, max_tokens: int) -> tuple[float, list[float]]:
        body = {"model": self.model_id, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
                "stream": max_tokens > 1}
        started, stamps = time.perf_counter(), []
        async with self.http.stream("POST", "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    stamps.append(time.perf_counter())
        return time.perf_counter() - started, stamps

    async def health(self, _: int) -> tuple[float, list[float]]:
        started = time.perf_counter()
        (await self.http.get("/health")).raise_for_status()
        return time.perf_counter() - started, []


def itl_ms(stamps: list[float]) -> float:
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1000 if len(stamps) > 1 else float("nan")


async def _latencies(call, requests: int) -> list[float]:
    return [(await call(1))[0] for _ in range(requests)]


async def _throughput(call, clients: int, per_client: int) -> float:
    async def client() -> None:
        for _ in range(per_client):
            await call(1)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return clients * per_client / (time.perf_counter() - started)


async def _itl(call, tokens: int) -> float:
    return itl_ms((await call(tokens))[1])


def bench_router_in_subprocess(url: str, ray_address: str, deployment: str, model_id: str, repeats: int,
                               requests: int) -> dict:
    """`bench_router` in a process of its own: a driver process joins one Ray cluster only (Serve keeps handles and
    its client per process, and they would point at the previous cluster's replicas)."""
    command = [sys.executable, "-m", "loadtest.bench.router", url, ray_address, deployment, model_id,
               "--repeats", str(repeats), "--requests", str(requests)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"router benchmark failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_router(url: str, ray_address: str, deployment: str, model_id: str, repeats: int, requests: int,
                 clients: int = 8, stream_tokens: int = 48) -> dict:
    import ray
    from ray import serve

    ray.init(address=ray_address, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        paths = Paths(url, serve.get_deployment_handle(deployment, app_name="quantserve"), model_id)
        samples: dict[str, list] = {key: [] for key in ("direct", "routed", "health", "direct_rps", "routed_rps",
                                                        "direct_itl", "routed_itl")}
        run(_latencies(paths.direct, 3))  # warm both paths up
        run(_latencies(paths.routed, 3))
        for _ in range(repeats):
            for name in ("direct", "routed", "health"):
                samples[name] += run(_latencies(getattr(paths, name), requests))
            for name in ("direct", "routed"):
                samples[f"{name}_rps"].append(run(_throughput(getattr(paths, name), clients, requests // clients)))
                samples[f"{name}_itl"].append(run(_itl(getattr(paths, name), stream_tokens)))
        run(paths.http.aclose())
    finally:
        ray.shutdown()
    ms = {name: [s * 1000 for s in samples[name]] for name in ("direct", "routed", "health")}
    p50 = {name: percentile(values, 50) for name, values in ms.items()}
    p99 = {name: percentile(values, 99) for name, values in ms.items()}
    direct_rps, routed_rps = statistics.median(samples["direct_rps"]), statistics.median(samples["routed_rps"])
    direct_itl, routed_itl = statistics.median(samples["direct_itl"]), statistics.median(samples["routed_itl"])
    return {"deployment": deployment, "requests_per_path": len(ms["direct"]), "clients": clients,
            "added_p50_ms": p50["routed"] - p50["direct"], "added_p99_ms": p99["routed"] - p99["direct"],
            "throughput_ratio": routed_rps / direct_rps, "itl_ratio": routed_itl / direct_itl,
            "direct_p50_ms": p50["direct"], "direct_p99_ms": p99["direct"], "routed_p50_ms": p50["routed"],
            "routed_p99_ms": p99["routed"], "health_p50_ms": p50["health"], "direct_rps": direct_rps,
            "routed_rps": routed_rps, "direct_itl_ms": direct_itl, "routed_itl_ms": routed_itl,
            "stream_tokens": stream_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description="router overhead against one running application; JSON on stdout")
    for name in ("url", "ray_address", "deployment", "model_id"):
        parser.add_argument(name)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=64)
    args = parser.parse_args()
    result = bench_router(args.url, args.ray_address, args.deployment, args.model_id, args.repeats, args.requests)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
