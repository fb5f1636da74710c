"""Helpers shared by the test tiers. This module imports no Ray, no serving app and no built model, so that the
unit tier can use it; what starts applications lives in `tests.helpers.apps`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
QUANTSERVE = [sys.executable, "-m", "quantserve.cli"]
POLL_INTERVAL_SECONDS = 0.1


def wait_for(condition: Callable[[], object], timeout: float, interval: float = POLL_INTERVAL_SECONDS) -> bool:
    """Poll `condition` until it is truthy (True) or `timeout` seconds pass (False); it is tried once more at
    the deadline, so a condition that became true while the last interval elapsed still counts."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())


class HandClock:
    """A clock the test moves by hand, for code that takes `clock=` (rate limits, time attribution)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_quantserve(*args: str, timeout: float = 600, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The real `quantserve` CLI in a subprocess, its output captured as text."""
    return subprocess.run([*QUANTSERVE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


async def wait_for_async(condition: Callable[[], object], timeout: float, interval: float = 0.01) -> bool:
    """`wait_for` inside an event loop: polls without blocking the loop, so the code under test keeps running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(interval)
    return bool(condition())
