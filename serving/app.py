"""The Ray Serve application builder: `serving.app:build_app`, the import path `serve run`, `quantserve serve`
and KubeRay's serveConfigV2 all use.

One deployment per served variant (its engine) and one router deployment (the OpenAI ingress) that
holds a handle to each; when the router may run more than one replica, a RateLimitStore deployment too, which
every router replica asks (serving/rate_limit_store.py).
"""

from __future__ import annotations

from pathlib import Path

from ray.serve import Application
from ray.serve.config import BackpressureConfig

from quantserve.config import (
    LimitsConfig,
    LoggingSpec,
    QuantserveConfig,
    RouterSpec,
    ServeSpec,
    load_config,
    parse_config,
)
from quantserve.constants import DEFAULT_CONFIG_PATH
from serving.catalog import ServedVariant, build_catalog
from serving.rate_limit_store import RateLimitStore
from serving.replicas import EmbeddingReplica, OnnxTextReplica, VllmTextReplica
from serving.router import Router


def deployment_class(variant: ServedVariant):
    if variant.kind == "embedding":
        return EmbeddingReplica
    if variant.backend == "vllm":
        return VllmTextReplica
    return OnnxTextReplica


def logging_config(spec: LoggingSpec) -> dict:
    """Ray Serve's LoggingConfig for every deployment (and the proxies, see serve_cli)."""
    config = {"encoding": spec.format.upper(), "log_level": spec.level, "enable_access_log": spec.access_log}
    if spec.dir:
        config["logs_dir"] = str(Path(spec.dir).absolute())
    return config


# Seconds past the request timeout that a stopping replica or router waits for in-flight requests: the router
# ends every request by the timeout, so after this nothing is left to wait for.
SHUTDOWN_MARGIN_SECONDS = 15
# /health, /ready and /metrics pass no admission gate: the router's Serve-level bound leaves room for them.
PROBE_HEADROOM = 32


def shutdown_options(limits: LimitsConfig) -> dict:
    """A rolling update or a scale-down stops a replica (or the router) once its requests are done, waiting up to
    the request timeout, so that no stream is cut (Serve's default would kill it after 20 s)."""
    return {"graceful_shutdown_timeout_s": limits.request_timeout_s + SHUTDOWN_MARGIN_SECONDS,
            "graceful_shutdown_wait_loop_s": 1}


def deployment_options(variant: ServedVariant, spec: ServeSpec, logs: dict, limits: LimitsConfig) -> dict:
    options = {"name": variant.deployment_name, "logging_config": logs,
               "ray_actor_options": {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus}, **shutdown_options(limits)}
    if variant.kind == "chat":
        # A replica takes what its engine can run at once; Serve sends the next request to a replica with room (of
        # the same variant), and past `max_queue` waiting for one the handle refuses: the router tries a fallback.
        # Serve counts requests still being routed as queued, so the bound leaves room for a burst as large as the
        # variant's slots (fewer would refuse requests that free replicas could take).
        replicas = spec.autoscaling.max_replicas if spec.autoscaling is not None else spec.replicas
        options.update(max_ongoing_requests=spec.max_batch_size,
                       max_queued_requests=spec.max_queue + spec.max_batch_size * max(replicas, 1))
    return {**options, **replica_count(spec)}


def replica_count(spec: RouterSpec | ServeSpec) -> dict:
    """Serve's fixed `num_replicas`, or its autoscaling bounds."""
    if spec.autoscaling is None:
        return {"num_replicas": spec.replicas}
    return {"autoscaling_config": {"min_replicas": spec.autoscaling.min_replicas,
                                   "max_replicas": spec.autoscaling.max_replicas,
                                   "target_ongoing_requests": spec.autoscaling.target_ongoing_requests}}


def router_options(spec: RouterSpec, limits: LimitsConfig, logs: dict) -> dict:
    """The router's gate (AdmissionPolicy) bounds /v1 requests of each replica; Serve's bound is a backstop past it,
    with the same 503 and Retry-After. A new router starts before the old one stops (surge), so an update leaves
    no gap."""
    return {"ray_actor_options": {"num_cpus": spec.num_cpus}, "logging_config": logs, **shutdown_options(limits),
            "max_ongoing_requests": limits.max_concurrent_requests + limits.max_queued_requests + PROBE_HEADROOM,
            "max_queued_requests": limits.max_queued_requests, "max_surge_percent": 100,
            "backpressure_config": BackpressureConfig(status_code=503, retry_after_s=2), **replica_count(spec)}


def rate_limit_store(config: QuantserveConfig, logs: dict) -> Application | None:
    """The shared buckets, when the router may run more than one replica; one router keeps them in its process."""
    if config.router.max_replicas == 1:
        return None
    return RateLimitStore.options(logging_config=logs).bind(router_server_config(config))


def router_server_config(config: QuantserveConfig) -> dict:
    """The server section as the router reads it, with paths made absolute (Ray workers have another cwd).
    Keys themselves are read by the router from the environment or the file, never passed through Ray."""
    server = config.server.model_dump()
    if config.server.auth.api_keys_file:
        server["auth"]["api_keys_file"] = str(Path(config.server.auth.api_keys_file).absolute())
    return server


def replica_settings(config: QuantserveConfig) -> dict:
    """What a text replica reads from the server section."""
    return {"stall_timeout_s": config.server.limits.stall_timeout_s,
            "embedding_batch_tokens": config.server.limits.embedding_batch_tokens}


def build_application(config: QuantserveConfig) -> Application:
    catalog = build_catalog(config)
    logs = logging_config(config.server.logging)
    limits = config.server.limits
    handles, scales_to_zero = {}, []
    for variant in catalog:
        spec = config.model(variant.model).variant(variant.variant).serve
        if spec.autoscaling is None and spec.replicas == 0:
            continue  # listed and routed (to its fallbacks), never deployed: Serve refuses zero replicas
        if spec.autoscaling is not None and spec.autoscaling.min_replicas == 0:
            scales_to_zero.append(variant.id)
        options = deployment_options(variant, spec, logs, limits)
        handles[variant.id] = deployment_class(variant).options(**options).bind(variant.to_dict(),
                                                                                replica_settings(config))
    return Router.options(**router_options(config.router, limits, logs)).bind(
        [v.to_dict() for v in catalog], handles, router_server_config(config), scales_to_zero,
        rate_limit_store(config, logs))


def build_app(args: dict) -> Application:
    """Ray Serve builder. args: {"config": <quantserve config as a dict>} or {"config_path": "quantserve.yaml"}."""
    if "config" in args:
        config = parse_config(args["config"], origin="serve args")
    else:
        config = load_config(args.get("config_path", DEFAULT_CONFIG_PATH))
    return build_application(config)
