"""`make soak` (`quantserve soak`): a fixed load for a set time against the application started here.

It reports what a long run reveals and a short load test cannot: errors over the whole run, the drift of latency
from the first minute to the last, and the resident memory (RSS) of the router and of each replica (with the
processes it started, such as vLLM's engine) at the start and at the end. Traffic goes to 127.0.0.1 only, is
bounded in time and in requests, and the application is stopped at the end. Writes reports/soak-<time>/ with
soak.json, soak.md and soak.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from loadtest.cost import Slo, percentile
from loadtest.records import RequestRecord
from loadtest.runner import StepSettings, StepSpec, run_step
from loadtest.steps import parse_duration
from quantserve.constants import DEFAULT_CONFIG_PATH
from serving.launcher import AppStartError, running_app

SAMPLE_EVERY_S = 15.0
WINDOW_S = 60.0  # "first minute" and "last minute" of the drift figures


REPLICA_TITLE = "ServeReplica:quantserve:"  # Ray's process title: ray::ServeReplica:APP:DEPLOYMENT[.METHOD]


def serve_processes(root_pid: int) -> dict[str, list]:
    """Deployment name -> [its replica process, that process's children], for the application under `root_pid`."""
    import psutil

    found = {}
    for process in psutil.Process(root_pid).children(recursive=True):
        try:
            title = next((part for part in process.cmdline() if REPLICA_TITLE in part), None)
        except psutil.Error:
            continue
        if title:
            found[deployment_of(title)] = [process, *process.children(recursive=True)]
    return found


def deployment_of(title: str) -> str:
    """The deployment in a replica's process title, without the `.method` Ray appends while one runs (deployment
    names may hold dots too, but never a whole identifier after the last one: they hold `--`)."""
    rest = title.split(REPLICA_TITLE, 1)[1].split()[0]
    name, _, method = rest.rpartition(".")
    return name if name and method.isidentifier() else rest


def rss_mb(root_pid: int) -> dict[str, float]:
    import psutil

    sizes = {}
    for name, processes in serve_processes(root_pid).items():
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        sizes[name] = total / 2**20
    return sizes


class RssSampler(threading.Thread):
    def __init__(self, root_pid: int) -> None:
        super().__init__(daemon=True)
        self.root_pid, self.samples, self.stopped = root_pid, [], threading.Event()

    def run(self) -> None:
        while True:
            self.samples.append((time.time(), rss_mb(self.root_pid)))
            if self.stopped.wait(SAMPLE_EVERY_S):
                self.samples.append((time.time(), rss_mb(self.root_pid)))
                return


def window_latency(records: list[RequestRecord], start: float, end: float) -> dict[str, float | None]:
    inside = [r for r in records if r.ok and start <= r.start_s < end]
    e2e, ttft = [r.e2e_ms for r in inside], [r.ttft_ms for r in inside if r.ttft_ms is not None]
    return {"requests": len(inside), "e2e_p50_ms": percentile(e2e, 50), "e2e_p90_ms": percentile(e2e, 90),
            "ttft_p50_ms": percentile(ttft, 50)}


def summarize(records: list[RequestRecord], samples: list, meta: dict) -> dict:
    started = min(r.start_s for r in records) if records else time.time()
    ended = max(r.start_s for r in records) if records else started
    first, last = window_latency(records, started, started + WINDOW_S), window_latency(records, ended - WINDOW_S,
                                                                                          ended + 1)
    drift = {key: (last[key] / first[key] if first[key] and last[key] else None)
             for key in ("e2e_p50_ms", "e2e_p90_ms", "ttft_p50_ms")}
    errors: dict[str, int] = {}
    for record in records:
        if not record.ok:
            errors[record.error or str(record.status)] = errors.get(record.error or str(record.status), 0) + 1
    start_rss, end_rss = (samples[0][1], samples[-1][1]) if samples else ({}, {})
    memory = {name: {"start_mb": start_rss.get(name), "end_mb": end_rss.get(name),
                     "max_mb": max(s[1].get(name, 0.0) for s in samples)} for name in sorted(end_rss)}
    return {**meta, "requests": len(records), "errors": sum(errors.values()), "error_kinds": errors,
            "first_minute": first, "last_minute": last, "drift_last_over_first": drift, "rss": memory,
            "rss_samples": [{"t": t, **sizes} for t, sizes in samples]}


def markdown(summary: dict) -> str:
    lines = [f"# Soak: {summary['model']} at {summary['users']} users for {summary['duration_s']:.0f} s",
             "", f"Run {summary['started_at']} on {summary['machine']}.", "",
             f"**{summary['requests']} requests, {summary['errors']} errors**"
             + (f" ({', '.join(f'{k}: {v}' for k, v in summary['error_kinds'].items())})" if summary["errors"] else ""),
             "", "| latency | first minute | last minute | last ÷ first |", "|---|---|---|---|"]
    for key, label in (("e2e_p50_ms", "end-to-end p50 ms"), ("e2e_p90_ms", "end-to-end p90 ms"),
                       ("ttft_p50_ms", "TTFT p50 ms")):
        first, last, drift = summary["first_minute"][key], summary["last_minute"][key], \
            summary["drift_last_over_first"][key]
        lines.append(f"| {label} | {_fmt(first)} | {_fmt(last)} | {_fmt(drift, 2)} |")
    lines += ["", "| process (with its children) | RSS at start MB | after 1 min MB | at end MB | max MB | "
              "growth after 1 min MB |", "|---|---|---|---|---|---|"]
    after_warmup = rss_after(summary["rss_samples"], WINDOW_S)
    for name, rss in summary["rss"].items():
        warm = after_warmup.get(name)
        growth = rss["end_mb"] - warm if warm is not None and rss["end_mb"] is not None else None
        lines.append(f"| {name} | {_fmt(rss['start_mb'])} | {_fmt(warm)} | {_fmt(rss['end_mb'])} | "
                     f"{_fmt(rss['max_mb'])} | {_fmt(growth, 1)} |")
    lines += ["", "A replica's first minute includes first touches of memory it allocated at start (the ONNX engine's "
              "KV buffer is reserved for every slot and context position, and pages in as prompts reach them); "
              "growth after that first minute is the figure that would show a leak."]
    return "\n".join(lines) + "\n"


def rss_after(samples: list[dict], seconds: float) -> dict[str, float]:
    """The first RSS sample taken at least `seconds` into the run."""
    if not samples:
        return {}
    start = samples[0]["t"]
    later = next((s for s in samples if s["t"] - start >= seconds), samples[-1])
    return {k: v for k, v in later.items() if k != "t"}


def _fmt(value: float | None, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def plot(records: list[RequestRecord], summary: dict) -> bytes:
    from loadtest.plots import finish_axes, plt, to_png

    figure, (latency, memory) = plt.subplots(1, 2, figsize=(11, 4))
    if records:
        start = min(r.start_s for r in records)
        minutes = sorted({int((r.start_s - start) // WINDOW_S) for r in records})
        for q, style in ((50, "-"), (90, "--")):
            values = [percentile([r.e2e_ms for r in records if r.ok and int((r.start_s - start) // WINDOW_S) == m],
                                 q) for m in minutes]
            latency.plot([m + 0.5 for m in minutes], values, style, marker="o", label=f"p{q}")
    finish_axes(latency, "minute of the run", "end-to-end latency, ms", "Latency per minute")
    samples = summary["rss_samples"]
    if samples:
        for name in summary["rss"]:
            memory.plot([(s["t"] - samples[0]["t"]) / 60 for s in samples], [s.get(name) for s in samples], label=name)
    finish_axes(memory, "minute of the run", "RSS, MB", "Memory of router and replicas")
    return to_png(figure)


def add_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("soak", help="fixed load for a set time: errors, latency drift, memory",
                                   description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG_PATH))
    parser.add_argument("--model", default="smollm2-135m", help="model or model:variant to load (default: %(default)s)")
    parser.add_argument("--users", type=int, default=4, help="concurrent streaming users (default: %(default)s)")
    parser.add_argument("--duration", default="10m", help="how long (default: %(default)s)")
    parser.add_argument("--max-tokens", default="64")
    parser.add_argument("--max-requests", type=int, default=50_000, help="bound on requests (default: %(default)s)")
    parser.add_argument("--reports-dir", default="reports")
    parser.add_argument("--render", metavar="SOAK_JSON", help="only rewrite soak.md beside a soak.json")
    parser.set_defaults(handler=run_soak, parser=parser)


def run_soak(args: argparse.Namespace) -> int:
    if args.render:
        path = Path(args.render)
        text = markdown(json.loads(path.read_text())) + "\n![latency and memory over the run](soak.png)\n"
        (path.parent / "soak.md").write_text(text)
        print(text)
        return 0
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        args.parser.error(str(exc))
    folder = Path(args.reports_dir) / f"soak-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    log = Path(tempfile.mkdtemp(prefix="quantserve-soak-")) / "serve.log"
    print(f"==> starting the application (log: {log})", flush=True)
    try:
        with running_app(Path(args.config), log) as app:
            return _soak(app, args, duration, folder)
    except AppStartError as exc:
        print(f"soak: the application did not start: {exc}", file=sys.stderr)
        return 1


def _soak(app, args: argparse.Namespace, duration: float, folder: Path) -> int:
    from loadtest.machine import describe_machine

    settings = StepSettings(target=app.url, endpoint="chat", mode="users", warmup_s=0, duration_s=duration,
                            max_requests=args.max_requests, rate_users=args.users, prompts="mix",
                            max_tokens=args.max_tokens, slo=Slo(), seed=0)
    step = StepSpec(settings, model_id=args.model, label=args.model, level=args.users, folder=folder / "locust")
    sampler = RssSampler(app.process.pid)
    sampler.start()
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    print(f"==> soaking {args.model} at {args.users} users for {duration:.0f} s", flush=True)
    try:
        records = run_step(step, progress=lambda line: print(line, flush=True))
    finally:
        sampler.stopped.set()
        sampler.join(timeout=60)
    machine = describe_machine()
    summary = summarize(records, sampler.samples, {
        "model": args.model, "users": args.users, "duration_s": duration, "started_at": started_at,
        "machine": f"{machine['logical_cpus']} CPUs ({machine['cpu']}), {machine['memory_gib']} GiB"})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "soak.json").write_text(json.dumps(summary, indent=2) + "\n")
    (folder / "soak.md").write_text(markdown(summary) + "\n![latency and memory over the run](soak.png)\n")
    (folder / "soak.png").write_bytes(plot(records, summary))
    print(markdown(summary), flush=True)
    print(f"==> soak report: {folder}", flush=True)
    return 0 if records else 1

