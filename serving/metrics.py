"""Every quantserve Prometheus metric: names, buckets, labels, and the small functions that record them.

Where the numbers come from:
- The router records per-request metrics (`record_request`, `request_in_flight`) and whether each variant can take
  requests (`set_variant_ready`).
- Each engine replica records its own state (`record_replica_state`, `record_replica_step`, `replica_started`).

Replicas run in other processes than the router, so quantserve uses prometheus_client's multiprocess mode:
`prepare_multiprocess_dir` empties a folder and returns the environment to give every Ray deployment (through
`runtime_env`); each process then writes its values to files there, and the router's `/metrics` renders them all,
summed over processes, with `render_metrics`. A replica calls `mark_process_dead` when it shuts down, and
`render_metrics` also drops the live gauges of processes that died without doing so. The folder is per node: one
router sees the replicas of its own node. With multiprocess mode off, `render_metrics` renders one process's registry.

Cost of one request, in dollars:

    cost = price_per_hour / 3600 * replica_seconds
    replica_seconds = sum over the engine steps (prefill or decode) that included the request of
                      step duration / number of sequences in that step

`price_per_hour` is the replica's hardware profile price (`serve.hardware_profile`, priced in quantserve/prices.yaml).
A replica's busy time is thus split evenly among the sequences it served together; idle time is charged to nobody
here and shows instead in `quantserve_replica_cost_dollars_per_hour`, the price of every running replica.
"""

from __future__ import annotations

import collections
import glob
import os
import shutil
import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client import values as prometheus_values

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds. LLM requests range from a cached few-token reply to a multi-minute generation.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0,
                   30.0, 45.0, 60.0, 120.0, 300.0, 600.0)
# Seconds between two generated tokens: a millisecond on a GPU to seconds on a loaded CPU.
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15,
                       0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0)
TOKEN_COUNT_BUCKETS = tuple(float(2**i) for i in range(16))  # 1 .. 32768 tokens

REQUEST_LABELS = ("model", "variant", "backend", "endpoint")
VARIANT_LABELS = ("model", "variant", "backend")
REPLICA_LABELS = ("model", "variant", "backend", "replica")
REFUSAL_LABELS = ("endpoint", "code", "reason")
CLIENT_CLOSED = 499


@dataclass(frozen=True)
class RequestLabels:
    """Labels of one request. `endpoint` is the route path, e.g. `/v1/chat/completions`."""

    model: str
    variant: str
    backend: str
    endpoint: str

    def values(self) -> tuple[str, str, str, str]:
        return self.model, self.variant, self.backend, self.endpoint


@dataclass(frozen=True)
class ReplicaLabels:
    """Labels of one engine replica. `replica` is Ray Serve's replica id (unique per replica process)."""

    model: str
    variant: str
    backend: str
    replica: str

    def values(self) -> tuple[str, str, str, str]:
        return self.model, self.variant, self.backend, self.replica


def request_cost_dollars(price_per_hour: float, replica_seconds: float) -> float:
    """The module docstring's cost formula: the request's share of replica time, at the replica's hourly price."""
    if price_per_hour < 0 or replica_seconds < 0:
        raise ValueError(f"price_per_hour and replica_seconds must be >= 0, got {price_per_hour}, {replica_seconds}")
    return price_per_hour / 3600.0 * replica_seconds


class QuantserveMetrics:
    """All quantserve metrics of one process, registered in `registry` (prometheus_client's default by default).

    Make one per process (the router and each engine replica each make theirs); tests pass a fresh
    `CollectorRegistry()` so that several can live in one process.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        _check_multiprocess_mode()
        self.registry = registry
        self._init_request_metrics(registry)
        self._init_replica_metrics(registry)
        self._init_prompt_metrics(registry)

    def _init_request_metrics(self, registry: CollectorRegistry | None) -> None:
        def histogram(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
            return Histogram(name, doc, REQUEST_LABELS, buckets=buckets, registry=registry)

        def counter(name: str, doc: str, labels: Sequence[str] = REQUEST_LABELS) -> Counter:
            return Counter(name, doc, labels, registry=registry)

        self.requests = counter("quantserve_requests_total", "Finished requests by HTTP status code (499: client "
                                "went away; a stream that ended in an error counts as 500).", (*REQUEST_LABELS, "code"))
        self.time_to_first_token = histogram("quantserve_time_to_first_token_seconds",
                                             "Seconds from request arrival to the first generated token.",
                                             LATENCY_BUCKETS)
        self.inter_token_latency = histogram("quantserve_inter_token_latency_seconds",
                                             "Seconds between consecutive generated tokens of a request.",
                                             INTER_TOKEN_BUCKETS)
        self.e2e_latency = histogram("quantserve_e2e_request_latency_seconds",
                                     "Seconds from request arrival to its last byte.", LATENCY_BUCKETS)
        self.queue_wait = histogram("quantserve_queue_wait_seconds",
                                    "Seconds a request waited for a batch slot in its replica.", LATENCY_BUCKETS)
        self.request_prompt_tokens = histogram("quantserve_request_prompt_tokens", "Prompt tokens per request.",
                                               TOKEN_COUNT_BUCKETS)
        self.request_generation_tokens = histogram("quantserve_request_generation_tokens",
                                                   "Generated tokens per request.", TOKEN_COUNT_BUCKETS)
        self.prompt_tokens = counter("quantserve_prompt_tokens_total", "Prompt tokens processed.")
        self.generation_tokens = counter("quantserve_generation_tokens_total", "Tokens generated.")
        self.replica_seconds = counter("quantserve_request_replica_seconds_total",
                                       "Replica seconds used by requests (each step's duration split among its "
                                       "sequences).")
        self.cost = counter("quantserve_request_cost_dollars_total",
                            "Estimated cost of requests: replica price per hour / 3600 x replica seconds used.")
        self.in_flight = Gauge("quantserve_requests_in_flight", "Requests received and not yet answered.",
                               REQUEST_LABELS, registry=registry, multiprocess_mode="livesum")
        self.refused = counter("quantserve_requests_refused_total", "Requests refused before any model ran: by "
                               "admission (401 key, 413 body, 429 rate limit, 503 draining or queue_full) or by the "
                               "checks of the request body (400), by status and reason (the error code). Each is also "
                               "in quantserve_requests_total, with empty model labels.", REFUSAL_LABELS)
        self.disconnects = counter("quantserve_client_disconnects_total", "Requests whose client left before the "
                                   "response ended (recorded as 499), by stage: before_first_token or "
                                   "after_first_token.", (*REQUEST_LABELS, "stage"))
        self.variant_ready = Gauge("quantserve_variant_ready", "1 when the router can send requests to the variant "
                                   "(a ready replica, or a healthy deployment scaled to zero on purpose), else 0.",
                                   VARIANT_LABELS, registry=registry, multiprocess_mode="livemax")

    def _init_replica_metrics(self, registry: CollectorRegistry | None) -> None:
        def gauge(name: str, doc: str) -> Gauge:
            # The replica label is unique per process, so max over processes is that replica's own value.
            return Gauge(name, doc, REPLICA_LABELS, registry=registry, multiprocess_mode="livemax")

        self.batch_size = gauge("quantserve_replica_running_requests", "Sequences in the replica's running batch.")
        self.queue_length = gauge("quantserve_replica_waiting_requests", "Requests waiting for a batch slot.")
        self.slot_use = gauge("quantserve_replica_slot_use_ratio",
                              "Share of batch slots (or KV-cache blocks) in use, 0 to 1.")
        self.price = gauge("quantserve_replica_cost_dollars_per_hour",
                           "Price of the running replica per hour, from its hardware profile.")
        self.replica_generation_tokens = Counter("quantserve_replica_generation_tokens_total",
                                                 "Tokens generated by the replica.", REPLICA_LABELS, registry=registry)
        self.replica_busy = Counter("quantserve_replica_busy_seconds_total",
                                    "Seconds the replica spent in engine steps.", REPLICA_LABELS, registry=registry)

    def record_request(self, labels: RequestLabels, *, status_code: int, e2e_seconds: float,
                       ttft_seconds: float | None = None, inter_token_seconds: Sequence[float] = (),
                       queue_wait_seconds: float | None = None, prompt_tokens: int = 0, generated_tokens: int = 0,
                       replica_seconds: float = 0.0, price_per_hour: float = 0.0) -> None:
        """Record one finished request (router). Leave out what the request did not have (no TTFT for embeddings)."""
        values = labels.values()
        self.requests.labels(*values, str(status_code)).inc()
        if status_code == CLIENT_CLOSED:
            stage = "before_first_token" if ttft_seconds is None else "after_first_token"
            self.disconnects.labels(*values, stage).inc()
        self.e2e_latency.labels(*values).observe(e2e_seconds)
        if ttft_seconds is not None:
            self.time_to_first_token.labels(*values).observe(ttft_seconds)
        if queue_wait_seconds is not None:
            self.queue_wait.labels(*values).observe(queue_wait_seconds)
        observe_all(self.inter_token_latency.labels(*values), inter_token_seconds)
        self._record_usage(values, prompt_tokens, generated_tokens, replica_seconds, price_per_hour)

    def _record_usage(self, values: tuple[str, ...], prompt_tokens: int, generated_tokens: int,
                      replica_seconds: float, price_per_hour: float) -> None:
        cost = request_cost_dollars(price_per_hour, replica_seconds)
        if prompt_tokens or generated_tokens:
            self.request_prompt_tokens.labels(*values).observe(prompt_tokens)
            self.request_generation_tokens.labels(*values).observe(generated_tokens)
        self.prompt_tokens.labels(*values).inc(prompt_tokens)
        self.generation_tokens.labels(*values).inc(generated_tokens)
        self.replica_seconds.labels(*values).inc(replica_seconds)
        self.cost.labels(*values).inc(cost)

    def record_refusal(self, endpoint: str, status_code: int, reason: str) -> None:
        """Router: a request refused before any model ran (no model is known yet: its model labels are empty)."""
        self.refused.labels(endpoint, str(status_code), reason).inc()
        self.requests.labels("", "", "", endpoint, str(status_code)).inc()

    @contextmanager
    def request_in_flight(self, labels: RequestLabels) -> Iterator[None]:
        """Count the request as in flight while the block runs (router; wrap the whole response, stream included)."""
        gauge = self.in_flight.labels(*labels.values())
        gauge.inc()
        try:
            yield
        finally:
            gauge.dec()

    def set_variant_ready(self, model: str, variant: str, backend: str, ready: bool) -> None:
        """Router: whether the variant can take requests now (the no-ready-replica alert fires on 0)."""
        self.variant_ready.labels(model, variant, backend).set(1 if ready else 0)

    def replica_started(self, labels: ReplicaLabels, price_per_hour: float) -> None:
        """Engine replica, once at start: publish its price and an empty state."""
        self.price.labels(*labels.values()).set(price_per_hour)
        self.record_replica_state(labels, running=0, waiting=0, slot_use_ratio=0.0)
        self.replica_generation_tokens.labels(*labels.values()).inc(0)
        self.replica_busy.labels(*labels.values()).inc(0)

    def _init_prompt_metrics(self, registry: CollectorRegistry | None) -> None:
        self.first_token_parts = Histogram(
            "quantserve_replica_first_token_seconds", "Parts of a request's time to first token spent in its replica, "
            "by stage: template_tokenize (chat template and tokenizer), queue (waiting for a batch slot), prefill "
            "(its prompt's forward passes, decode steps of other requests in between), first_sample (choosing the "
            "first token and turning it into text). The router hop is the rest of quantserve_time_to_first_token_"
            "seconds: the two _sum series' difference.", (*REPLICA_LABELS, "stage"), buckets=LATENCY_BUCKETS,
            registry=registry)
        self.prefix_cache_requests = Counter(
            "quantserve_replica_prefix_cache_requests_total", "Prompts looked up in the replica's prefix cache, by "
            "result: hit (leading tokens reused) or miss. Hit rate: hit / (hit + miss).", (*REPLICA_LABELS, "result"),
            registry=registry)
        self.prefix_cache_tokens = Counter(
            "quantserve_replica_prefix_cache_tokens_total", "Prompt tokens of requests looked up in the prefix cache, "
            "by result: reused (taken from the cache) or computed (prefilled).", (*REPLICA_LABELS, "result"),
            registry=registry)

    def record_first_token_parts(self, labels: ReplicaLabels, parts: dict[str, float | None]) -> None:
        """Engine replica, at a request's first output: the stages of its time to first token it measured (None:
        not measured by this backend)."""
        for stage, seconds in parts.items():
            if seconds is not None:
                self.first_token_parts.labels(*labels.values(), stage).observe(seconds)

    def record_prefix_cache(self, labels: ReplicaLabels, prompt_tokens: int, cached_tokens: int) -> None:
        """Engine replica, at a request's first output: how much of its prompt came from the prefix cache."""
        values = labels.values()
        self.prefix_cache_requests.labels(*values, "hit" if cached_tokens else "miss").inc()
        self.prefix_cache_tokens.labels(*values, "reused").inc(cached_tokens)
        self.prefix_cache_tokens.labels(*values, "computed").inc(prompt_tokens - cached_tokens)

    def record_replica_state(self, labels: ReplicaLabels, *, running: int, waiting: int,
                             slot_use_ratio: float) -> None:
        """Engine replica, after each scheduling decision: batch size, queue length and slot (or KV) use."""
        values = labels.values()
        self.batch_size.labels(*values).set(running)
        self.queue_length.labels(*values).set(waiting)
        self.slot_use.labels(*values).set(slot_use_ratio)

    def record_replica_step(self, labels: ReplicaLabels, *, generated_tokens: int, step_seconds: float) -> None:
        """Engine replica, after each engine step: tokens it generated and how long it took."""
        values = labels.values()
        self.replica_generation_tokens.labels(*values).inc(generated_tokens)
        self.replica_busy.labels(*values).inc(step_seconds)


def observe_all(histogram: Histogram, amounts: Sequence[float]) -> None:
    """`histogram.observe(a)` for every amount, with one update per bucket touched and one of the sum instead of
    two per amount: in multiprocess mode each update is a write to the process's file, under a lock. Relies on
    prometheus_client's Histogram internals (tests/unit/test_metrics.py checks it against `observe`)."""
    if not amounts:
        return
    counts = collections.Counter(bisect_left(histogram._upper_bounds, amount) for amount in amounts)
    histogram._sum.inc(sum(amounts))
    for index, count in counts.items():
        histogram._buckets[index].inc(count)


def multiprocess_dir() -> Path | None:
    """The multiprocess folder this process writes to, or None when multiprocess mode is off."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def _check_multiprocess_mode() -> None:
    active = getattr(prometheus_values.ValueClass, "_multiprocess", False)
    if multiprocess_dir() is not None and not active:
        raise RuntimeError(f"{MULTIPROC_ENV} was set after prometheus_client was imported, so this process would "
                           "keep its metrics to itself; set it in the process environment (Ray runtime_env) instead")


def prepare_multiprocess_dir(path: str | Path) -> dict[str, str]:
    """Empty (or create) `path` for multiprocess metrics; return the env vars to give every process that records.

    Call once, before any replica starts, then pass the result in Ray's `runtime_env={"env_vars": ...}` for the
    router and every engine deployment. The variable must be in a process's environment before prometheus_client
    is imported there, which `runtime_env` guarantees.
    """
    path = Path(path).absolute()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return {MULTIPROC_ENV: str(path)}


def mark_process_dead(pid: int | None = None, path: str | Path | None = None) -> None:
    """Drop the live gauges of process `pid` (this one by default); a replica calls it as it shuts down."""
    path = path or multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(pid if pid is not None else os.getpid(), str(path))


def mark_dead_processes(path: str | Path) -> list[int]:
    """Mark dead every process whose live gauges are in `path` but that no longer runs (crashed replicas)."""
    pids = {int(Path(f).stem.rsplit("_", 1)[1]) for f in glob.glob(os.path.join(path, "gauge_live*_*.db"))}
    dead = sorted(pid for pid in pids if not _process_running(pid))
    for pid in dead:
        multiprocess.mark_process_dead(pid, str(path))
    return dead


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# Test-only, unset (no delay) in service: every render takes this many seconds longer, wherever it runs, so that a
# test can tell a render that holds up the router's event loop from one that does not (tests/integration/
# test_metrics_scrape.py).
RENDER_DELAY_ENV = "QUANTSERVE_TEST_RENDER_DELAY_S"


def render_metrics(registry: CollectorRegistry = REGISTRY, path: str | Path | None = None) -> bytes:
    """The text exposition for `/metrics` (serve it with `CONTENT_TYPE`).

    In multiprocess mode (`path`, or this process's PROMETHEUS_MULTIPROC_DIR) it aggregates every process's
    files; otherwise it renders `registry`.
    """
    if delay := float(os.environ.get(RENDER_DELAY_ENV) or 0):
        time.sleep(delay)
    path = path or multiprocess_dir()
    if path is None:
        return generate_latest(registry)
    mark_dead_processes(path)
    aggregated = CollectorRegistry()
    multiprocess.MultiProcessCollector(aggregated, path=str(path))
    return generate_latest(aggregated)


__all__ = [
    "CONTENT_TYPE", "INTER_TOKEN_BUCKETS", "LATENCY_BUCKETS", "MULTIPROC_ENV", "QuantserveMetrics", "RENDER_DELAY_ENV",
    "ReplicaLabels", "RequestLabels", "TOKEN_COUNT_BUCKETS", "mark_dead_processes", "mark_process_dead",
    "multiprocess_dir", "observe_all", "prepare_multiprocess_dir", "render_metrics", "request_cost_dollars",
]
