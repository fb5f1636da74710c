"""`quantserve serve`: start (or join) a Ray cluster on loopback and run the application until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
import threading

from serving.config import load_config
from serving.metrics import MULTIPROC_ENV, prepare_multiprocess_dir
from serving.serve_config import HAPROXY_ENV_VARS, THROUGHPUT_ENV_VARS

# Keep every Ray listener on 127.0.0.1 and send no usage statistics. A local cluster has no load balancer
# that must first stop sending traffic, so Serve's 30 s minimum ingress draining is cut to 2 s (Ctrl-C stops fast).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2", "RAY_SERVE_PROXY_MIN_DRAINING_PERIOD_S": "2"}


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="serve the configured variants behind the OpenAI API")
    parser.add_argument("--config", default="quantserve.yaml", help="quantserve config file (default: %(default)s)")
    parser.add_argument("--host", help="bind address (default: the config's server.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: the config's server.port, 8000)")
    parser.add_argument("--ray-cpus", type=int, default=8,
                        help="logical CPUs a local Ray cluster declares (deployments reserve fractions of them)")
    parser.add_argument("--no-throughput-mode", action="store_true",
                        help="use Ray Serve's default data plane instead of the throughput-optimized one")
    parser.add_argument("--haproxy", action="store_true",
                        help="Ray Serve's HAProxy ingress (as the Helm chart runs); it listens on every interface")
    parser.set_defaults(handler=run_serve)


def runtime_environment(throughput_mode: bool, haproxy: bool) -> dict[str, str]:
    env = dict(LOOPBACK_ENV)
    if throughput_mode:
        env.update(THROUGHPUT_ENV_VARS)
    if haproxy:
        env.update(HAPROXY_ENV_VARS)
    env.update(prepare_multiprocess_dir(tempfile.mkdtemp(prefix="quantserve-metrics-")))
    return env


def run_serve(args: argparse.Namespace) -> None:
    from serving.catalog import build_catalog

    config = load_config(args.config)
    build_catalog(config)  # fail now, with one line, if a variant is not built
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    env = runtime_environment(not args.no_throughput_mode, args.haproxy)
    # Before Ray is imported (it reads these at import time) and inherited by Ray's own processes. The metrics
    # folder goes to quantserve's deployments only, through runtime_env: Ray's processes would write theirs there.
    os.environ.update({k: v for k, v in env.items() if k != MULTIPROC_ENV})

    import ray
    from ray import serve

    from serving.app import build_application

    address = os.environ.get("RAY_ADDRESS")
    local = {} if address else {"_node_ip_address": "127.0.0.1", "num_cpus": args.ray_cpus}
    ray.init(address=address, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False,
             **local)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_application(config), name="quantserve", route_prefix="/", blocking=False)
        print(f"quantserve: serving on http://{host}:{port} (Ctrl-C to stop)", flush=True)
        stop.wait()
        print("quantserve: shutting down", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
