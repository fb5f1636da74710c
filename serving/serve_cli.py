"""`quantserve serve`: start (or join) a Ray cluster on loopback and run the application until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import tempfile
import threading
import time

from quantserve.config import LoggingSpec, load_config
from quantserve.constants import DEFAULT_CONFIG_PATH
from serving.haproxy_loopback import loopback_haproxy_env, private_folder
from serving.metrics import MULTIPROC_ENV, prepare_multiprocess_dir
from serving.serve_config import APP_NAME, HAPROXY_ENV_VARS, THROUGHPUT_ENV_VARS, logging_env_vars

# Keep every Ray listener on 127.0.0.1 and send no usage statistics. A local cluster has no load balancer
# that must first stop sending traffic, so Serve's 30 s minimum ingress draining is cut to 2 s (Ctrl-C stops fast).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2", "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "2"}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve the configured variants behind the OpenAI API")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG_PATH),
                        help="quantserve config file (default: %(default)s)")
    parser.add_argument("--host", help="bind address (default: the config's server.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: the config's server.port, 8000)")
    parser.add_argument("--ray-cpus", type=int, default=8,
                        help="logical CPUs a local Ray cluster declares (deployments reserve fractions of them)")
    parser.add_argument("--no-throughput-mode", action="store_true",
                        help="use Ray Serve's default data plane instead of the throughput-optimized one")
    parser.add_argument("--haproxy", action="store_true",
                        help="Ray Serve's HAProxy ingress (as the Helm chart runs); on a loopback host all of "
                             "HAProxy's ports stay on 127.0.0.1 (serving/haproxy_loopback.py)")
    parser.set_defaults(handler=run_serve)


def runtime_environment(throughput_mode: bool, haproxy: bool, logging: LoggingSpec,
                        host: str = "127.0.0.1") -> dict[str, str]:
    env = {**LOOPBACK_ENV, **logging_env_vars(logging)}
    if throughput_mode:
        env.update(THROUGHPUT_ENV_VARS)
    if haproxy:
        env.update(HAPROXY_ENV_VARS)
        if host in LOOPBACK_HOSTS:  # Serve's stats and metrics frontends would bind every interface
            env.update(loopback_haproxy_env(private_folder()))
    env.update(prepare_multiprocess_dir(tempfile.mkdtemp(prefix="quantserve-metrics-")))
    return env


class ShutdownSignal:
    """SIGINT/SIGTERM: the first asks for a graceful stop (drain), a second one for an immediate stop."""

    def __init__(self) -> None:
        self.received = 0
        self.event = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, *_) -> None:
        self.received += 1
        self.event.set()

    @property
    def forced(self) -> bool:
        return self.received > 1


async def on_every_router(router, method: str) -> int:
    """`method` called on every router replica (Serve's broadcast, not one replica the handle picks), summed: the
    requests in flight across all of them."""
    return sum(await router.broadcast(method).results_async(timeout_s=10))


async def drain(timeout: float, shutdown: ShutdownSignal) -> None:
    """Turn new requests away on every router replica (503, /ready 503), then wait up to `timeout` s for the
    in-flight ones to finish. Async: in Serve's throughput-optimized mode a handle works only inside an event loop."""
    from ray import serve

    try:
        router = serve.get_app_handle(APP_NAME)
        remaining = await on_every_router(router, "drain")
    except Exception as exc:  # the application never came up, or is gone already: nothing to drain
        print(f"quantserve: no router to drain ({type(exc).__name__}: {exc})", flush=True)
        return
    deadline, last_report = time.monotonic() + timeout, 0.0
    while remaining and time.monotonic() < deadline and not shutdown.forced:
        if time.monotonic() - last_report >= 1:
            print(f"quantserve: draining, {remaining} request(s) in flight", flush=True)
            last_report = time.monotonic()
        await asyncio.sleep(0.2)
        with contextlib.suppress(Exception):
            remaining = await on_every_router(router, "in_flight")
    print(f"quantserve: drained, {remaining} request(s) cut off" if remaining else "quantserve: drained", flush=True)


async def stop_gracefully(timeout: float, shutdown: ShutdownSignal) -> None:
    """Drain, then shut Serve down in the same event loop as the handle that drained."""
    from ray import serve

    await drain(timeout, shutdown)
    await serve.shutdown_async()


def run_serve(args: argparse.Namespace) -> None:
    from serving.catalog import build_catalog

    config = load_config(args.config)
    build_catalog(config)  # fail now, with one line, if a variant is not built
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    env = runtime_environment(not args.no_throughput_mode, args.haproxy, config.server.logging, host)
    # Before Ray is imported (it reads these at import time) and inherited by Ray's own processes. The metrics
    # folder goes to quantserve's deployments only, through runtime_env: Ray's processes would write theirs there.
    os.environ.update({k: v for k, v in env.items() if k != MULTIPROC_ENV})

    import ray
    from ray import serve

    from serving.app import build_application, logging_config

    address = os.environ.get("RAY_ADDRESS")
    local = {} if address else {"_node_ip_address": "127.0.0.1", "num_cpus": args.ray_cpus}
    context = ray.init(address=address, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False,
                       **local)
    shutdown, stopped = ShutdownSignal(), False
    try:
        print(f"quantserve: Ray at {context.address_info['gcs_address']}, logs in "
              f"{config.server.logging.dir or os.path.join(context.address_info['session_dir'], 'logs', 'serve')}",
              flush=True)
        serve.start(http_options={"host": host, "port": port}, logging_config=logging_config(config.server.logging))
        serve.run(build_application(config), name=APP_NAME, route_prefix="/", blocking=False)
        print(f"quantserve: serving on http://{host}:{port} (Ctrl-C to stop)", flush=True)
        shutdown.event.wait()
        print("quantserve: shutting down", flush=True)
        asyncio.run(stop_gracefully(config.server.drain_timeout_s, shutdown))
        stopped = True
    finally:
        if not stopped:
            serve.shutdown()
        ray.shutdown()
