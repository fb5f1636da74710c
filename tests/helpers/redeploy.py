"""Redeploy a running quantserve application with another config, as `serve deploy` or KubeRay's serveConfigV2
update does: a driver joins the application's Ray cluster and runs the application built from the new config
under the same name. Serve then rolls the changed deployments over.

    python -m tests.helpers.redeploy RAY_ADDRESS CONFIG_PATH

Run in a subprocess (a Ray driver of its own); `QUANTSERVE_TEST_*` variables of its environment reach the new
replicas, as the first deploy's did.
"""

from __future__ import annotations

import os
import sys

from quantserve.config import load_config
from serving.serve_cli import LOOPBACK_ENV, runtime_environment

TEST_ENV_PREFIX = "QUANTSERVE_TEST_"


def redeploy(address: str, config_path: str) -> None:
    config = load_config(config_path)
    env = runtime_environment(True, False, config.server.logging)
    env.update({k: v for k, v in os.environ.items() if k.startswith(TEST_ENV_PREFIX)})
    # On 127.0.0.1, with the cluster's token (a local Ray cluster turns token authentication on, as for bench).
    os.environ.update({**LOOPBACK_ENV, "RAY_AUTH_MODE": "token"})

    import ray
    from ray import serve

    from serving.app import build_application
    from serving.serve_config import APP_NAME

    ray.init(address=address, log_to_driver=False, _node_ip_address="127.0.0.1", runtime_env={"env_vars": env})
    try:
        serve.run(build_application(config), name=APP_NAME, route_prefix="/", blocking=False)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    redeploy(sys.argv[1], sys.argv[2])
