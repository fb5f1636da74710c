"""A real Prometheus server for tests: loopback only, a temp config, always terminated.

    with run_prometheus("127.0.0.1:8123", tmp_path, rule_files=[RULES_FILE]) as prometheus:
        prometheus.wait_for_scrapes(2)
        prometheus.query("sum(quantserve_requests_total)")

Needs the `prometheus` binary (Debian package `prometheus`); `make test` installs it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import yaml

from serving.launcher import free_port  # noqa: F401 - re-exported for the metrics tests

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES_FILE = REPO_ROOT / "helm" / "quantserve" / "files" / "prometheus-rules.yaml"
INSTALL_HINT = "install the Debian package `prometheus` (apt-get install -y prometheus); `make test` does this"


def require_binary(name: str) -> str:
    """The path of `name` (prometheus or promtool), or a clear error saying how to get it."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"`{name}` is not on PATH: {INSTALL_HINT}")
    return path


class PrometheusServer:
    """A running Prometheus: its URL and PromQL helpers."""

    def __init__(self, url: str, log_file: Path) -> None:
        self.url = url
        self.log_file = log_file
        self._http = httpx.Client(base_url=url, timeout=10)

    def query(self, promql: str) -> list[dict]:
        """Instant query; the `result` list of `/api/v1/query` (raises on a PromQL error)."""
        return self._api("/api/v1/query", query=promql)["result"]

    def value(self, promql: str) -> float | None:
        """The value of a query that returns one series, or None when it returns none."""
        result = self.query(promql)
        if len(result) > 1:
            raise AssertionError(f"{promql} returned {len(result)} series, expected one: {result}")
        return float(result[0]["value"][1]) if result else None

    def rule_groups(self) -> list[dict]:
        return self._api("/api/v1/rules")["groups"]

    def targets(self) -> list[dict]:
        return self._api("/api/v1/targets")["activeTargets"]

    def wait_for(self, check: Callable[[], bool], what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Prometheus: timed out after {timeout}s waiting for {what}")
            time.sleep(0.25)

    def wait_for_scrapes(self, count: int = 2, timeout: float = 30) -> None:
        """Wait until the target has been scraped, and found up, `count` more times than when called."""
        scrapes = "sum(count_over_time(up[1h]))"
        start = self.value(scrapes) or 0
        self.wait_for(lambda: (self.value(scrapes) or 0) >= start + count and self.value("min(up)") == 1,
                      f"{count} successful scrapes of {[t['scrapeUrl'] for t in self.targets()]}", timeout)

    def _api(self, path: str, **params: str) -> dict:
        response = self._http.get(path, params=params)
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus {path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def close(self) -> None:
        self._http.close()


def write_config(workdir: Path, target: str, rule_files: Sequence[Path], scrape_interval: str) -> Path:
    config = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "rule_files": [str(Path(f).resolve()) for f in rule_files],
        "scrape_configs": [{"job_name": "quantserve", "static_configs": [{"targets": [target]}]}],
    }
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@contextmanager
def run_prometheus(target: str, workdir: Path, rule_files: Sequence[Path] = (), scrape_interval: str = "1s",
                   startup_timeout: float = 30) -> Iterator[PrometheusServer]:
    """Start Prometheus on a free 127.0.0.1 port scraping `target` (`host:port`, path /metrics); stop it after."""
    binary = require_binary("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config = write_config(workdir, target, rule_files, scrape_interval)
    port = free_port()
    log_file = workdir / "prometheus.log"
    command = [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
               f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    with log_file.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    server = PrometheusServer(f"http://127.0.0.1:{port}", log_file)
    try:
        _wait_ready(server, process, startup_timeout)
        yield server
    finally:
        server.close()
        _terminate(process)


def _wait_ready(server: PrometheusServer, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{_tail(server.log_file)}")
        try:
            if httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"prometheus not ready after {timeout}s:\n{_tail(server.log_file)}")


def _terminate(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()  # SIGTERM to this PID only
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"
