"""The Ray Serve application builder: `serving.app:build_app`, the import path `serve run`, `quantserve serve`
and KubeRay's serveConfigV2 all use.

One deployment per served variant (its engine) and one router deployment (the OpenAI ingress) that
holds a handle to each.
"""

from __future__ import annotations

from pathlib import Path

from ray.serve import Application

from quantserve.config import LoggingSpec, QuantserveConfig, ServeSpec, load_config, parse_config
from quantserve.constants import DEFAULT_CONFIG_PATH
from serving.catalog import ServedVariant, build_catalog
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


def deployment_options(variant: ServedVariant, spec: ServeSpec, logs: dict) -> dict:
    options = {"name": variant.deployment_name, "logging_config": logs,
               "ray_actor_options": {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus}}
    if spec.autoscaling is not None:
        options["autoscaling_config"] = {
            "min_replicas": spec.autoscaling.min_replicas, "max_replicas": spec.autoscaling.max_replicas,
            "target_ongoing_requests": spec.autoscaling.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = spec.replicas
    return options


def router_server_config(config: QuantserveConfig) -> dict:
    """The server section as the router reads it, with paths made absolute (Ray workers have another cwd).
    Keys themselves are read by the router from the environment or the file, never passed through Ray."""
    server = config.server.model_dump()
    if config.server.auth.api_keys_file:
        server["auth"]["api_keys_file"] = str(Path(config.server.auth.api_keys_file).absolute())
    return server


def build_application(config: QuantserveConfig) -> Application:
    catalog = build_catalog(config)
    logs = logging_config(config.server.logging)
    handles = {}
    for variant in catalog:
        spec = config.model(variant.model).variant(variant.variant).serve
        if spec.autoscaling is None and spec.replicas == 0:
            continue  # listed and routed (to its fallbacks), never deployed: Serve refuses zero replicas
        handles[variant.id] = deployment_class(variant).options(**deployment_options(variant, spec, logs)).bind(
            variant.to_dict())
    return Router.options(ray_actor_options={"num_cpus": 0.1}, logging_config=logs).bind(
        [v.to_dict() for v in catalog], handles, router_server_config(config))


def build_app(args: dict) -> Application:
    """Ray Serve builder. args: {"config": <quantserve config as a dict>} or {"config_path": "quantserve.yaml"}."""
    if "config" in args:
        config = parse_config(args["config"], origin="serve args")
    else:
        config = load_config(args.get("config_path", DEFAULT_CONFIG_PATH))
    return build_application(config)
