"""Ray nodes started with `ray start --block` on loopback, each in a process group of its own, stopped by PID.

Every node is on 127.0.0.1. The head runs with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (serving.serve_cli.LOOPBACK_ENV),
which keeps Ray from replacing 127.0.0.1 by the machine's routable address; a worker cannot join in that mode, so
workers run Ray's CLI through tests.helpers.ray_start_loopback (see there).

`ray stop` would stop every Ray cluster on the machine (other tests' too), so a node is stopped through what this
module started: the `ray start` process group, then any process whose command line names the cluster's own temp dir
(Ray's daemons and workers carry the session folder in their arguments). Integration tier only.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from serving.launcher import free_port
from serving.serve_cli import LOOPBACK_ENV
from tests.helpers import REPO, wait_for

RAY_START = {"head": [str(Path(sys.executable).parent / "ray"), "start"],
             "worker": [sys.executable, "-m", "tests.helpers.ray_start_loopback", "start"]}
LOOPBACK = "127.0.0.1"
NODE_START_TIMEOUT_SECONDS = 300
# On a busy 2-core machine Ray's processes start slowly: a raylet must register with the GCS within a minute and a
# worker process with its raylet within one. Give both the node start timeout.
SLOW_MACHINE_ENV = {"RAY_raylet_start_wait_time_s": str(NODE_START_TIMEOUT_SECONDS),
                    "RAY_worker_register_timeout_seconds": str(NODE_START_TIMEOUT_SECONDS)}


def ray_params(params: dict[str, str]) -> list[str]:
    """`ray start` arguments from a KubeRay-style rayStartParams map (strings)."""
    return [f"--{key}={value}" for key, value in params.items()]


class RayNode:
    """One `ray start --block` process (and the Ray daemons under it)."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log: Path) -> None:
        self.name, self.log = name, log
        self.node_id = ""  # Ray's id of the node, once it has joined
        with log.open("w") as handle:
            self.process = subprocess.Popen([*command, "--block"], cwd=REPO, env=env, stdout=handle,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def raylet_pid(self) -> int | None:
        with contextlib.suppress(psutil.NoSuchProcess):
            for child in psutil.Process(self.process.pid).children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    if child.name() == "raylet":
                        return child.pid
        return None

    def kill_raylet(self) -> int:
        """SIGKILL the node's raylet, as when its pod or machine dies; returns the PID killed."""
        pid = self.raylet_pid()
        assert pid is not None, f"{self.name}: no raylet running\n{self.log_tail()}"
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def log_tail(self, size: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-size:]


class LoopbackCluster:
    """A head node and worker nodes on 127.0.0.1, sharing one temp dir, every port chosen free."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        # Ray's session folder holds Unix sockets, whose paths may not exceed 107 bytes: a short folder of its own.
        self.folder, self.temp_dir = folder, Path(tempfile.mkdtemp(prefix="qs-ray-"))
        # A pod starts with no Ray auth token (fresh HOME), so Ray runs without token auth there; here `ray start`
        # would turn it on if a local `ray.init()` had left ~/.ray/auth_token behind.
        self.env = {**os.environ, **LOOPBACK_ENV, "RAY_AUTH_MODE": "disabled", **SLOW_MACHINE_ENV, **env}
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.nodes: list[RayNode] = []

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _common_args(self, params: dict[str, str]) -> list[str]:
        # Every agent port given: a raylet left to read the ports its agents chose waits 15 s for them, then aborts
        # (seen on this machine under load).
        ports = {name: free_port() for name in ("metrics-export-port", "dashboard-agent-listen-port",
                                                 "dashboard-agent-grpc-port", "runtime-env-agent-port")}
        return [*ray_params(params), *ray_params(ports), f"--node-ip-address={LOOPBACK}", f"--temp-dir={self.temp_dir}",
                "--object-store-memory=150000000", "--disable-usage-stats"]

    def start_head(self, params: dict[str, str]) -> RayNode:
        args = [*RAY_START["head"], *self._common_args(params), "--head", f"--port={self.gcs_port}",
                f"--dashboard-host={LOOPBACK}", f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={free_port()}", "--include-dashboard=true"]
        head = self._start("head", args, self.env)
        assert wait_for(lambda: head.process.poll() is not None or self._dashboard_up(), NODE_START_TIMEOUT_SECONDS,
                        interval=1)
        assert head.process.poll() is None and self._dashboard_up(), head.log_tail()
        return self._joined(head, set())

    def start_worker(self, params: dict[str, str], name: str) -> RayNode:
        # Serve's proxy on a worker node binds its own port here: the head's proxy keeps the configured one.
        env = {**self.env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
               "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(free_port())}
        assert wait_for(lambda: self.alive_node_ids() is not None, NODE_START_TIMEOUT_SECONDS, interval=1)
        known = self.alive_node_ids()
        args = [*RAY_START["worker"], *self._common_args(params), f"--address={LOOPBACK}:{self.gcs_port}"]
        worker = self._start(name, args, env)
        return self._joined(worker, known)

    def _joined(self, node: RayNode, known: set[str]) -> RayNode:
        """Wait until `node` shows in Ray's node list (an id not in `known`) and record its id."""
        assert wait_for(lambda: (self.alive_node_ids() or known) - known, NODE_START_TIMEOUT_SECONDS, interval=1), \
            f"{node.log_tail()}\n{self.session_log_tails()}"
        [node.node_id] = self.alive_node_ids() - known
        return node

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> RayNode:
        node = RayNode(name, args, env, self.folder / f"{name}.log")
        self.nodes.append(node)
        return node

    def _dashboard_up(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.dashboard_url}/api/version", timeout=2).status_code == 200
        return False

    def alive_node_ids(self) -> set[str] | None:
        """Ray's ids of the nodes it reports alive; None while the state API does not answer. (A state filter on
        the request would make Ray 2.60 report the nodes it leaves out as missing output: filter here.)"""
        from ray.util.state import list_nodes

        with contextlib.suppress(Exception):
            return {n.node_id for n in list_nodes(address=self.dashboard_url, raise_on_missing_output=False)
                    if n.state == "ALIVE"}
        return None

    def stop(self) -> None:
        """Stop every node this cluster started, then whatever still runs from its temp dir (Ray workers), and
        remove the temp dir."""
        for node in reversed(self.nodes):
            node.stop()
        for _ in range(3):
            leftovers = self._own_processes()
            if not leftovers:
                break
            for process in leftovers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            time.sleep(1)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def session_log_tails(self, size: int = 1500) -> str:
        """The end of each error log of Ray's daemons (raylet, GCS, agents), to tell why a node did not come up.
        (A raylet's fatal check is the first line of its .err file: shown too.)"""
        logs = [*sorted(self.temp_dir.glob("session_*/logs/*.err")),
                *sorted(self.temp_dir.glob("session_*/logs/raylet*.out"))]
        return "\n".join(f"--- {log.name}\n{_head_and_tail(log.read_text(errors='replace'), size)}" for log in logs
                         if log.stat().st_size)

    def listening_addresses(self) -> dict[str, set[str]]:
        """Address -> names of this cluster's processes listening on it (TCP)."""
        processes = {p.pid: p for node in self.nodes for p in _family(node.process.pid)}
        processes.update({p.pid: p for p in self._own_processes()})
        listening: dict[str, set[str]] = {}
        for connection in psutil.net_connections(kind="tcp"):
            if connection.status == psutil.CONN_LISTEN and connection.pid in processes:
                with contextlib.suppress(psutil.Error):
                    listening.setdefault(connection.laddr.ip, set()).add(processes[connection.pid].name())
        return listening

    def _own_processes(self) -> list[psutil.Process]:
        own = []
        for process in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(str(self.temp_dir) in arg for arg in process.info["cmdline"] or []):
                    own.append(process)
        return own


def _head_and_tail(text: str, size: int) -> str:
    return text if len(text) <= 2 * size else f"{text[:size]}\n[...]\n{text[-size:]}"


def _family(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.NoSuchProcess):
        parent = psutil.Process(pid)
        return [parent, *parent.children(recursive=True)]
    return []


def serve_status(cluster: LoopbackCluster) -> dict:
    """Serve's REST API on the head's dashboard (what KubeRay reads): the applications and their deployments."""
    return httpx.get(f"{cluster.dashboard_url}/api/serve/applications/", timeout=10).json()


def deploy(cluster: LoopbackCluster, config_text: str) -> None:
    """`serve deploy` of a Serve config file through the head's dashboard, as KubeRay submits serveConfigV2."""
    path = cluster.folder / "serve-config.yaml"
    path.write_text(config_text)
    serve = str(Path(sys.executable).parent / "serve")
    run = subprocess.run([serve, "deploy", str(path), "--address", cluster.dashboard_url], env=cluster.env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


