"""The Ray Serve application builder: `serving.app:build_app`, the import path `serve run`, `quantserve serve`
and KubeRay's serveConfigV2 all use.

One deployment per served variant (its engine) and one router deployment (the OpenAI ingress) that
holds a handle to each.
"""

from __future__ import annotations

from ray.serve import Application

from serving.catalog import ServedVariant, build_catalog
from serving.config import DEFAULT_CONFIG_PATH, QuantserveConfig, ServeSpec, load_config, parse_config
from serving.replicas import EmbeddingReplica, OnnxTextReplica
from serving.router import Router


def deployment_class(variant: ServedVariant):
    if variant.kind == "embedding":
        return EmbeddingReplica
    if variant.backend == "vllm":
        from serving.vllm_replica import VllmTextReplica

        return VllmTextReplica
    return OnnxTextReplica


def deployment_options(variant: ServedVariant, spec: ServeSpec) -> dict:
    options = {"name": variant.deployment_name,
               "ray_actor_options": {"num_cpus": spec.num_cpus, "num_gpus": spec.num_gpus}}
    if spec.autoscaling is not None:
        options["autoscaling_config"] = {
            "min_replicas": spec.autoscaling.min_replicas, "max_replicas": spec.autoscaling.max_replicas,
            "target_ongoing_requests": spec.autoscaling.target_ongoing_requests,
        }
    else:
        options["num_replicas"] = spec.replicas
    return options


def build_application(config: QuantserveConfig) -> Application:
    catalog = build_catalog(config)
    handles = {}
    for variant in catalog:
        spec = config.model(variant.model).variant(variant.variant).serve
        if spec.autoscaling is None and spec.replicas == 0:
            continue  # listed and routed (to its fallbacks), never deployed: Serve refuses zero replicas
        handles[variant.id] = deployment_class(variant).options(**deployment_options(variant, spec)).bind(
            variant.to_dict())
    return Router.options(ray_actor_options={"num_cpus": 0.1}).bind(
        [v.to_dict() for v in catalog], handles, config.server.limits.model_dump())


def build_app(args: dict) -> Application:
    """Ray Serve builder. args: {"config": <quantserve config as a dict>} or {"config_path": "quantserve.yaml"}."""
    if "config" in args:
        config = parse_config(args["config"], origin="serve args")
    else:
        config = load_config(args.get("config_path", DEFAULT_CONFIG_PATH))
    return build_application(config)
