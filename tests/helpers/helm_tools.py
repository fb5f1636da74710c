"""Render the Helm chart with a real Helm (helm_python binds Helm's Go SDK) and validate what comes out.

Nothing here needs a cluster or the network: schemas ship inside the packages, KubeRay's CRDs are read from
../shared/kuberay (tests.helpers.kuberay_crd).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "quantserve"
# Built variants pulled from object storage into each pod's emptyDir (what a cluster should run).
OBJECT_STORAGE = {"models": {"source": "pull", "pull": {"uri": "s3://quantserve-models/smollm2/0.1.0",
                                                        "credentialsSecret": "quantserve-s3"}}}
PROFILES = {"default": {}, "cpu": CHART / "values-cpu.yaml", "gpu": CHART / "values-gpu.yaml",
            "object-storage": OBJECT_STORAGE}
KUBERNETES_VERSION = "1.37.0"
# Every optional resource on, for the validation of kinds the default profile leaves out.
EVERYTHING_ON = {
    "ingress": {"enabled": True, "tls": {"enabled": True}},
    "monitoring": {
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    },
    "probes": {"liveness": {"enabled": True}},
    "apiKeys": {"keys": ["key-one-123", "key-two-456"]},
    "serviceAccount": {"create": True, "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/models"}},
    "podAnnotations": {"example.com/owner": "ml-platform"},
    "podLabels": {"team": "ml"},
    "extraEnv": [{"name": "AWS_REGION", "value": "eu-west-1"}],
    "cpuWorkers": {
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "cpu-worker"}}}],
        "runtimeClassName": "gvisor",
    },
}


def profile_values(profile: str, **overrides: Any) -> dict:
    source = PROFILES[profile]
    values = yaml.safe_load(source.read_text()) if isinstance(source, Path) else source
    return deep_merge(values, overrides)


def deep_merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def render(values: dict | None = None, *, name: str = "demo", namespace: str = "ml") -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would print it."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        return chart.render(values=values or {}, name=name, namespace=namespace, is_install=True)


def render_objects(values: dict | None = None, **kwargs: Any) -> list[dict]:
    objects = []
    for path, text in render(values, **kwargs).items():
        if path.endswith(".yaml"):
            objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


def find(objects: list[dict], kind: str, name_suffix: str = "") -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, f"{kind}*{name_suffix}: {len(matches)} objects"
    return matches[0]


def schema_error(values: dict) -> str:
    """The message Helm gives for values that fail values.schema.json (or '' when they pass)."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        try:
            chart.validate_schema(chart.merge_values(values))
        except helm.HelmValuesError as exc:
            return str(exc)
    return ""


def lint(values: dict | None = None) -> dict:
    import helm_python as helm

    return helm.lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES_VERSION}")


def validate_builtin(obj: dict) -> None:
    """kubernetes-validate --strict against Kubernetes KUBERNETES_VERSION; raises for unknown fields too."""
    utils = _kubernetes_validate()
    utils.validate(obj, KUBERNETES_VERSION, strict=True)


@functools.cache
def _kubernetes_validate():
    """kubernetes_validate.utils, with its schema files read once instead of at every validate()."""
    from kubernetes_validate import utils

    utils.schema_contents = functools.cache(utils.schema_contents)
    return utils


def validate_pod_template(template: dict) -> None:
    """A RayCluster group's `template` is a core/v1 PodTemplateSpec: validate it as one, strictly."""
    validate_builtin({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}, "template": template})


def validate_prometheus_operator(obj: dict) -> None:
    """Parse with the prometheus-operator models, and fail on fields the models do not know (they drop them)."""
    from cloudcoil.models.prometheus_operator import v1

    model = getattr(v1, obj["kind"]).model_validate(obj)
    round_trip = model.model_dump(mode="json", by_alias=True, exclude_unset=True)
    assert round_trip == obj, f"{obj['kind']}: fields the prometheus-operator schema does not know"


def validate_rayservice_pods(obj):
    """Each Ray group's pod template, strictly, as a core/v1 PodTemplateSpec of Kubernetes KUBERNETES_VERSION."""
    cluster = obj["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        validate_pod_template(group["template"])


# --- reading the rendered RayService ---


def ray_cluster(objects):
    return find(objects, "RayService")["spec"]["rayClusterConfig"]


def serve_config(objects):
    return yaml.safe_load(find(objects, "RayService")["spec"]["serveConfigV2"])


def ray_pod_specs(objects):
    """The pod spec of each Ray group, head first."""
    cluster = ray_cluster(objects)
    return [group["template"]["spec"] for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]]


def ray_containers(objects):
    """The Ray container of each group (KubeRay runs `ray start` in the first container), head first."""
    return [spec["containers"][0] for spec in ray_pod_specs(objects)]


def workers(objects, name):
    [group] = [g for g in ray_cluster(objects)["workerGroupSpecs"] if g["groupName"] == name]
    return group


def api_key_env(objects):
    [env] = [e for e in ray_containers(objects)[0]["env"] if e["name"] == "QUANTSERVE_API_KEYS"]
    return env["valueFrom"]["secretKeyRef"]


def load_sync_script():
    spec = importlib.util.spec_from_file_location("helm_sync_values", REPO / "helm" / "sync_values.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
