"""Where the router's CPU goes: the processes of a running application by role, their CPU time over a run, and a
py-spy profile of them under load, summarised by function.

Roles, found by process title in the application's process tree (Ray names an actor's process `ray::<class>`):
`router` is the router's Serve replica; `front` is what answers HTTP before it, Serve's Python proxy
(ProxyActor) or, with the HAProxy ingress, the haproxy processes and the actor that manages them.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import psutil

ROLE_MARKERS = {"router": ("ServeReplica:quantserve:Router",), "front": ("ProxyActor", "HAProxyManager")}
PROFILE_TOP = 12


def _role(process: psutil.Process) -> str | None:
    with contextlib.suppress(psutil.Error):
        if process.name() == "haproxy":
            return "front"
        title = " ".join(process.cmdline())
        for role, markers in ROLE_MARKERS.items():
            if any(marker in title for marker in markers):
                return role
    return None


def application_processes(root_pid: int) -> dict[str, list[int]]:
    """Pids of each role under `root_pid` (the `quantserve serve` process)."""
    found: dict[str, list[int]] = {"router": [], "front": []}
    for process in psutil.Process(root_pid).children(recursive=True):
        role = _role(process)
        if role:
            found[role].append(process.pid)
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds these processes and their children have used so far, each process once."""
    processes: dict[int, psutil.Process] = {}
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            processes |= {each.pid: each for each in (process, *process.children(recursive=True))}
    total = 0.0
    for process in processes.values():
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def first_titled(pids: list[int], marker: str) -> int | None:
    """The first of these processes whose title holds `marker` (py-spy profiles Python processes only)."""
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            if marker in " ".join(psutil.Process(pid).cmdline()):
                return pid
    return None


def py_spy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return found if Path(found).exists() else None


def start_profile(pid: int, seconds: float, output: Path) -> subprocess.Popen | None:
    """py-spy sampling `pid` for `seconds` into collapsed stacks; None without py-spy. 100 Hz, without pausing the
    process, and only the thread that holds the GIL: samples are time spent running Python (py-spy's idle
    detection does not apply to Ray's threads blocked in C++, which would otherwise fill the profile)."""
    binary = py_spy()
    if binary is None:
        return None
    return subprocess.Popen([binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
                             "--rate", "100", "--nonblocking", "--gil", "--format", "raw", "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


# Components by where a sample's innermost Python frame is (first match wins). A frame of Ray's worker main loop or
# of a thread's run() is Python waiting on, or running, C++ code: Ray's core worker and gRPC.
COMPONENTS = [("quantserve (serving/)", ("/serving/", "/quantserve/")),
              ("Ray core worker, gRPC (C++ under the worker's main loop and its threads)",
               ("_private/worker.py", "/threading.py", "grpc/")),
              ("Serve's status read by the router's probe (serve.status(), cloudpickle)", ("cloudpickle",)),
              ("logging", ("/logging/",)), ("Ray metrics", ("util/metrics.py",)),
              ("Ray Serve (replica, router, proxy)", ("/ray/serve/",)),
              ("Ray (actor calls, serialization)", ("/ray/",)),
              ("HTTP (uvicorn, starlette, fastapi)", ("/uvicorn/", "/starlette/", "/fastapi/", "/httptools/", "/h11/")),
              ("pydantic", ("/pydantic",)), ("asyncio", ("/asyncio/",))]
SCAFFOLDING_SHARE = 0.9  # frames in nearly every sample (the event loop, the worker's main) say nothing


def _frame(frame: str) -> str:
    """`function (/path/to/package/file.py:line)` → `function (package/file.py)`: a function's lines add up."""
    name, _, where = frame.partition(" (")
    return f"{name} ({'/'.join(where.split(':', 1)[0].split('/')[-2:])})" if where else name


def summarize_profile(collapsed: str, top: int = PROFILE_TOP) -> dict:
    """Self and inclusive shares of samples per function from py-spy's raw (collapsed) output."""
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    components: collections.Counter = collections.Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        raw = stack.split(";")
        frames = [_frame(f) for f in raw]
        total += int(count)
        own[frames[-1]] += int(count)
        components[component(raw)] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    if not total:
        return {"samples": 0, "self": [], "inclusive": [], "components": [], "quantserve": []}
    return {"samples": total,
            "self": [{"function": f, "share": n / total} for f, n in own.most_common(top)],
            "inclusive": [{"function": f, "share": n / total} for f, n in inclusive.most_common()
                          if n / total < SCAFFOLDING_SHARE][:top],
            "components": [{"component": c, "share": n / total} for c, n in components.most_common()],
            "quantserve": [{"function": f, "share": n / total} for f, n in inclusive.most_common()
                           if f.endswith(("py)",)) and f.split(" (")[-1].startswith(("serving/", "quantserve/"))][:top]}


def component(stack: list[str]) -> str:
    """The component a sample belongs to: the probe's status read wherever it is on the stack, else the innermost
    frame's file."""
    if any("serve_deployments (" in frame for frame in stack):
        return COMPONENTS[2][0]
    where = "/" + stack[-1].partition(" (")[2]  # py-spy writes paths from the package down
    return next((name for name, marks in COMPONENTS if any(mark in where for mark in marks)), "other")


def finish_profile(process: subprocess.Popen | None, output: Path) -> dict | None:
    if process is None:
        return None
    _, stderr = process.communicate(timeout=120)
    if process.returncode != 0 or not output.exists():
        return {"error": stderr.decode(errors="replace")[-500:]}
    return summarize_profile(output.read_text())
