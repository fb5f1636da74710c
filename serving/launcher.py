"""Start `quantserve serve` in a subprocess, wait until it is ready, and always stop it.

Used by the tests, `make demo` and the benchmarks, so all of them run the application exactly as a
user does. The subprocess leads its own process group; stopping it sends Ctrl-C (Serve and the Ray
cluster it started shut down), then ends whatever of that group is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

START_TIMEOUT_SECONDS = 300
STOP_TIMEOUT_SECONDS = 90


class AppStartError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningApp:
    def __init__(self, process: subprocess.Popen, url: str, log: Path) -> None:
        self.process, self.url, self.log = process, url, log

    @property
    def ray_address(self) -> str:
        """The address of the Ray cluster the application runs on (from its start-up line), for a driver to join."""
        match = re.search(r"quantserve: Ray at (\S+),", self.log.read_text(errors="replace"))
        if match is None:
            raise AppStartError("the application's log does not say where its Ray cluster is")
        return match.group(1)

    def log_tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""

    def wait_ready(self, variants: list[str] | None = None, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Until /ready reports the given variants (all when None) ready; AppStartError otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AppStartError(f"quantserve serve exited early:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                states = httpx.get(f"{self.url}/ready", timeout=5).json()["variants"]
                if all(states.get(v) for v in (variants or states)):
                    return
            time.sleep(1)
        raise AppStartError(f"the application was not ready in {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever of Ray outlived the driver


@contextlib.contextmanager
def running_app(config_path: Path, log: Path, port: int | None = None, variants: list[str] | None = None,
                cwd: Path | None = None, extra_args: tuple[str, ...] = ()) -> Iterator[RunningApp]:
    port = port or free_port()
    command = [sys.executable, "-m", "quantserve.cli", "serve", "--config", str(config_path), "--port", str(port),
               *extra_args]
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    app = RunningApp(process, f"http://127.0.0.1:{port}", log)
    try:
        app.wait_ready(variants)
        yield app
    finally:
        app.stop()
