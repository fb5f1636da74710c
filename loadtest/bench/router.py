"""Router overhead: the same request straight to a replica's deployment handle (from a Ray driver in this process)
and through the router over HTTP (Serve's proxy, the FastAPI ingress, one handle hop), interleaved.

Also GET /health over HTTP (proxy and ingress, no replica), which splits the overhead into the HTTP front and the
extra hop; throughput at each client count; streaming: inter-token latency seen through the router against at the
handle, and the router's CPU per streamed token (its replica process's CPU time over concurrent streams, less what
it uses idle over the same time, ÷ the tokens the streams carried); optionally a py-spy profile of the router and
the HTTP front under load (loadtest/bench/router_cpu.py).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

from loadtest.bench.engines import run
from loadtest.bench.router_cpu import cpu_seconds, finish_profile, first_titled, start_profile
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

    async def streamed_tokens(self, max_tokens: int) -> int:
        """One routed stream; the completion tokens it carried (from its usage chunk)."""
        body = {"model": self.model_id, "prompt": PROMPT, "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "stream_options": {"include_usage": True}}
        tokens = 0
        async with self.http.stream("POST", "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"usage":{' in line.replace(" ", ""):
                    tokens = json.loads(line[6:])["usage"]["completion_tokens"]
        return tokens

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


class Processes:
    """The router's and the HTTP front's pids (loadtest.bench.router_cpu.application_processes)."""

    def __init__(self, router: list[int], front: list[int]) -> None:
        self.router, self.front = router, front


async def _cpu_per_token(paths: Paths, processes: Processes, streams: int, tokens: int, idle_s: float) -> dict:
    """µs of CPU per streamed token in the router and in the front, net of what each uses idle (the router probes
    every variant every second) over the same time."""
    idle_start = [cpu_seconds(processes.router), cpu_seconds(processes.front)]
    await asyncio.sleep(idle_s)
    idle = [(cpu_seconds(pids) - before) / idle_s for pids, before in zip((processes.router, processes.front),
                                                                           idle_start, strict=True)]
    before, started = [cpu_seconds(processes.router), cpu_seconds(processes.front)], time.perf_counter()
    carried = sum(await asyncio.gather(*(paths.streamed_tokens(tokens) for _ in range(streams))))
    elapsed = time.perf_counter() - started
    used = [cpu_seconds(pids) - b for pids, b in zip((processes.router, processes.front), before, strict=True)]
    net = [max(0.0, u - rate * elapsed) for u, rate in zip(used, idle, strict=True)]
    return {"tokens": carried, "seconds": elapsed, "router_idle_cores": idle[0], "front_idle_cores": idle[1],
            "router_us_per_token": net[0] / carried * 1e6 if carried else None,
            "front_us_per_token": net[1] / carried * 1e6 if carried and processes.front else None,
            "router_gross_us_per_token": used[0] / carried * 1e6 if carried else None}


def _profile(paths: Paths, processes: Processes, clients: int, seconds: float, folder: Path,
             stream_tokens: int) -> dict:
    """py-spy while `clients` send requests through the router for `seconds`: one-token requests (the router and
    Serve's Python proxy; HAProxy is not Python), then streams of `stream_tokens` (the router)."""
    unary = _profile_under_load(paths, {"router": first_titled(processes.router, "Router"),
                                        "front": first_titled(processes.front, "ProxyActor")},
                                clients, seconds, folder, 1)
    streamed = _profile_under_load(paths, {"router_streaming": first_titled(processes.router, "Router")},
                                   clients, seconds, folder, stream_tokens)
    return unary | streamed


def _profile_under_load(paths: Paths, targets: dict[str, int | None], clients: int, seconds: float, folder: Path,
                        max_tokens: int) -> dict:
    targets = {role: pid for role, pid in targets.items() if pid}
    running = {role: start_profile(pid, seconds, folder / f"{role}.txt") for role, pid in targets.items()}
    cpu_before, started = {role: cpu_seconds([pid]) for role, pid in targets.items()}, time.perf_counter()

    async def load() -> None:
        deadline = time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < deadline:
                await paths.routed(max_tokens)

        await asyncio.gather(*(client() for _ in range(clients)))

    run(load())
    elapsed = time.perf_counter() - started
    cpu = {role: cpu_seconds([pid]) - cpu_before[role] for role, pid in targets.items()}
    summaries = {role: finish_profile(process, folder / f"{role}.txt") for role, process in running.items()}
    return {role: summary and {**summary, "process_cpu_s": cpu[role], "seconds": elapsed, "max_tokens": max_tokens}
            for role, summary in summaries.items()}


def bench_router_in_subprocess(url: str, ray_address: str, deployment: str, model_id: str, plan: dict,
                               processes: dict[str, list[int]], folder: Path) -> dict:
    """`bench_router` in a process of its own: a driver process joins one Ray cluster only (Serve keeps handles and
    its client per process, and they would point at the previous cluster's replicas)."""
    command = [sys.executable, "-m", "loadtest.bench.router", url, ray_address, deployment, model_id,
               "--repeats", str(plan["repeats"]), "--requests", str(plan["router_requests"]),
               "--clients", ",".join(map(str, plan["router_clients"])), "--streams", str(plan["router_streams"]),
               "--idle-seconds", str(plan["router_idle_seconds"]),
               "--profile-seconds", str(plan["router_profile_seconds"]), "--profile-folder", str(folder),
               "--router-pids", ",".join(map(str, processes["router"])),
               "--front-pids", ",".join(map(str, processes["front"]))]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"router benchmark failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class Plan:
    """How much of each measurement (the bench plan's router_* entries)."""

    def __init__(self, repeats: int, requests: int, clients: list[int], streams: int, idle_s: float,
                 profile_s: float, stream_tokens: int = 48) -> None:
        self.repeats, self.requests, self.clients, self.streams = repeats, requests, clients, streams
        self.idle_s, self.profile_s, self.stream_tokens = idle_s, profile_s, stream_tokens


def bench_router(url: str, ray_address: str, deployment: str, model_id: str, plan: Plan, processes: Processes,
                 folder: Path) -> dict:
    import ray
    from ray import serve

    ray.init(address=ray_address, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        paths = Paths(url, serve.get_deployment_handle(deployment, app_name="quantserve"), model_id)
        samples = _measure(paths, processes, plan)
        profile = (_profile(paths, processes, plan.clients[0], plan.profile_s, folder, plan.stream_tokens)
                   if plan.profile_s else None)
        run(paths.http.aclose())
    finally:
        ray.shutdown()
    return {"deployment": deployment, "stream_tokens": plan.stream_tokens, **_summary(samples, plan),
            "profile": profile}


def _measure(paths: Paths, processes: Processes, plan: Plan) -> dict[str, list]:
    samples: dict[str, list] = collections.defaultdict(list)
    run(_latencies(paths.direct, 3))  # warm both paths up
    run(_latencies(paths.routed, 3))
    for _ in range(plan.repeats):
        for name in ("direct", "routed", "health"):
            samples[name] += run(_latencies(getattr(paths, name), plan.requests))
        for clients in plan.clients:
            for name in ("direct", "routed"):
                per_client = max(2, plan.requests // clients)
                samples[f"{name}_rps_{clients}"].append(run(_throughput(getattr(paths, name), clients, per_client)))
        for name in ("direct", "routed"):
            samples[f"{name}_itl"].append(run(_itl(getattr(paths, name), plan.stream_tokens)))
        samples["cpu"].append(run(_cpu_per_token(paths, processes, plan.streams, plan.stream_tokens, plan.idle_s)))
    return samples


def _median_of(rows: list[dict], key: str) -> float | None:
    values = [row[key] for row in rows if row[key] is not None]
    return statistics.median(values) if values else None


def _summary(samples: dict[str, list], plan: Plan) -> dict:
    ms = {name: [s * 1000 for s in samples[name]] for name in ("direct", "routed", "health")}
    p50 = {name: percentile(values, 50) for name, values in ms.items()}
    p99 = {name: percentile(values, 99) for name, values in ms.items()}
    throughput = [{"clients": c, "direct_rps": statistics.median(samples[f"direct_rps_{c}"]),
                   "routed_rps": statistics.median(samples[f"routed_rps_{c}"])} for c in plan.clients]
    for level in throughput:
        level["ratio"] = level["routed_rps"] / level["direct_rps"]
    direct_itl, routed_itl = statistics.median(samples["direct_itl"]), statistics.median(samples["routed_itl"])
    cpu = {key: _median_of(samples["cpu"], key) for key in samples["cpu"][0]}
    return {"requests_per_path": len(ms["direct"]), "clients": throughput[0]["clients"],
            "added_p50_ms": p50["routed"] - p50["direct"], "added_p99_ms": p99["routed"] - p99["direct"],
            "throughput_ratio": throughput[0]["ratio"], "throughput": throughput,
            "itl_ratio": routed_itl / direct_itl,
            "direct_p50_ms": p50["direct"], "direct_p99_ms": p99["direct"], "routed_p50_ms": p50["routed"],
            "routed_p99_ms": p99["routed"], "health_p50_ms": p50["health"],
            "direct_rps": throughput[0]["direct_rps"], "routed_rps": throughput[0]["routed_rps"],
            "direct_itl_ms": direct_itl, "routed_itl_ms": routed_itl, "streams": plan.streams, "cpu": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description="router overhead against one running application; JSON on stdout")
    for name in ("url", "ray_address", "deployment", "model_id"):
        parser.add_argument(name)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", default="8,32")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams of the CPU-per-token run")
    parser.add_argument("--idle-seconds", type=float, default=2.0)
    parser.add_argument("--profile-seconds", type=float, default=0.0, help="py-spy under load (0: none)")
    parser.add_argument("--profile-folder", default=".")
    parser.add_argument("--router-pids", default="")
    parser.add_argument("--front-pids", default="")
    args = parser.parse_args()
    pids = {name: [int(p) for p in getattr(args, f"{name}_pids").split(",") if p] for name in ("router", "front")}
    plan = Plan(args.repeats, args.requests, [int(c) for c in args.clients.split(",")], args.streams,
                args.idle_seconds, args.profile_seconds)
    result = bench_router(args.url, args.ray_address, args.deployment, args.model_id, plan,
                          Processes(pids["router"], pids["front"]), Path(args.profile_folder))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
