"""The Ray Serve config file for quantserve, as `serve deploy` reads it and KubeRay's `RayService.serveConfigV2` holds.

The Helm chart renders the same structure from its `quantserve` values (a copy of quantserve.yaml);
tests/test_helm_chart.py checks that the two agree.
"""

from __future__ import annotations

from typing import Any

from quantserve.config import LoggingSpec, QuantserveConfig

APP_NAME = "quantserve"
IMPORT_PATH = "serving.app:build_app"
# Ray Serve's high-throughput mode (Ray >= 2.55): throughput-optimized data plane and HAProxy ingress.
# The proxy reads them when Ray starts, so they must also be in the Ray pods' environment; here they reach
# the replicas that Ray starts for the application.
THROUGHPUT_ENV_VARS = {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
# HAProxy ingress: on every interface in a pod (the chart's default); `quantserve serve --haproxy` on a loopback host
# adds serving/haproxy_loopback.py's settings. Off by default locally until the test suite has run under it.
HAPROXY_ENV_VARS = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}


def logging_env_vars(spec: LoggingSpec) -> dict[str, str]:
    """Environment of Serve's processes that the logging settings need (read when a replica starts)."""
    return {"RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": str(spec.buffer_records)}


def build_serve_config(
    config: QuantserveConfig, *, host: str = "0.0.0.0", port: int = 8000, throughput_optimized: bool = True,
    haproxy: bool = True,
) -> dict[str, Any]:
    """The Serve config-file structure (as `serve build` writes it) for one `quantserve` application.

    `args.config` holds the config as the user wrote it (fields left unset stay unset), so it reads like
    quantserve.yaml and `serving.app:build_app` parses it back into the same `QuantserveConfig`.
    """
    env_vars = {**(THROUGHPUT_ENV_VARS if throughput_optimized else {}), **(HAPROXY_ENV_VARS if haproxy else {}),
                **logging_env_vars(config.server.logging)}
    application = {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": IMPORT_PATH,
        "args": {"config": config.model_dump(mode="json", exclude_unset=True)},
        "runtime_env": {"env_vars": env_vars},
    }
    return {"proxy_location": "EveryNode", "http_options": {"host": host, "port": port}, "applications": [application]}
