"""Kubernetes conventions of the chart: a render that never changes by itself, API keys from a Secret you own, a
NetworkPolicy, streaming-friendly ingress without /metrics, extension points, and a grace period from the config."""

import base64
import math
import re

import pytest
import yaml

from quantserve.config import ServerConfig
from tests.helpers import REPO
from tests.helpers.helm_tools import (
    CHART,
    EVERYTHING_ON,
    api_key_env,
    find,
    ray_cluster,
    ray_containers,
    ray_pod_specs,
    render,
    render_objects,
)

CONFIG = yaml.safe_load((REPO / "quantserve.yaml").read_text())
MARGIN = yaml.safe_load((CHART / "values.yaml").read_text())["terminationGraceMarginSeconds"]


def with_server(**server) -> dict:
    return {"quantserve": {**CONFIG, "server": {**CONFIG.get("server", {}), **server}}}


# --- a stable render, API keys ------------------------------------------------------------------------------------


def test_the_render_is_the_same_every_time():
    """GitOps tools (Argo CD, Flux) render again and again: nothing random, nothing read from a cluster."""
    assert render(EVERYTHING_ON) == render(EVERYTHING_ON)
    actions = [a for path in (CHART / "templates").iterdir() for a in re.findall(r"{{.*?}}", path.read_text(), re.S)]
    assert actions and not [a for a in actions if re.search(r"\b(lookup|rand\w*|uuidv4|now|genPrivateKey)\b", a)]


def test_api_keys_from_your_own_secret_by_default():
    objects = render_objects()
    assert "Secret" not in {o["kind"] for o in objects}
    assert api_key_env(objects) == {"name": "demo-quantserve-api-keys", "key": "api-keys"}
    notes = render()["quantserve/templates/NOTES.txt"]
    assert "kubectl -n ml create secret generic demo-quantserve-api-keys \\\n    --from-literal=api-keys=" in notes


def test_api_keys_from_an_existing_secret_or_listed_keys():
    existing = render_objects({"apiKeys": {"existingSecret": "my-keys", "secretKey": "keys"}})
    assert "Secret" not in {o["kind"] for o in existing}
    assert api_key_env(existing) == {"name": "my-keys", "key": "keys"}
    assert "create secret" not in render({"apiKeys": {"existingSecret": "my-keys"}})["quantserve/templates/NOTES.txt"]
    given = render_objects({"apiKeys": {"keys": ["key-one-123", "key-two-456"]}})
    secret = find(given, "Secret")
    assert base64.b64decode(secret["data"]["api-keys"]).decode() == "key-one-123,key-two-456"
    assert api_key_env(given)["name"] == secret["metadata"]["name"]
    assert all("QUANTSERVE_API_KEYS" not in str(c) for c in ray_containers(render_objects({"apiKeys": {
        "enabled": False}})))


# --- network policy ------------------------------------------------------------------------------------------------


def rules(objects):
    return find(objects, "NetworkPolicy")["spec"]["ingress"]


def named_ports(rule):
    return {p["port"] for p in rule.get("ports", [])}


def test_network_policy_keeps_ray_to_the_release():
    objects = render_objects()
    policy = find(objects, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    for spec in ray_pod_specs(objects):
        pod_labels = ray_cluster(objects)["headGroupSpec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
        assert spec["containers"][0]["ports"]  # the named ports below exist on the pods
    [internal] = [r for r in rules(objects) if "ports" not in r]
    assert internal["from"] == [{"podSelector": {"matchLabels": policy["podSelector"]["matchLabels"]}}]
    open_ports = set().union(*(named_ports(r) for r in rules(objects) if "from" not in r))
    assert open_ports == {"serve", "qs-metrics", "metrics"}  # never the dashboard, GCS or Ray's client port
    [operator] = [r for r in rules(objects) if "dashboard" in named_ports(r)]
    assert operator["from"][0]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}


def test_network_policy_sources_can_be_narrowed_or_the_policy_left_out():
    ingress_nginx = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    narrowed = rules(render_objects({"networkPolicy": {"servingFrom": ingress_nginx, "metricsFrom": monitoring}}))
    assert [r for r in narrowed if "ports" in r and "from" not in r] == []
    assert {"ports": [{"port": "serve", "protocol": "TCP"}], "from": ingress_nginx} in narrowed
    assert "NetworkPolicy" not in {o["kind"] for o in render_objects({"networkPolicy": {"enabled": False}})}


# --- ingress -------------------------------------------------------------------------------------------------------


def ingress(values):
    return find(render_objects({"ingress": {"enabled": True, **values}}), "Ingress")


def test_ingress_streams_without_buffering_and_waits_as_long_as_a_request_may_run():
    annotations = ingress({})["metadata"]["annotations"]
    timeout = str(math.ceil(ServerConfig().limits.request_timeout_s) + MARGIN)
    assert annotations == {
        "nginx.ingress.kubernetes.io/proxy-buffering": "off",
        "nginx.ingress.kubernetes.io/proxy-read-timeout": timeout,
        "nginx.ingress.kubernetes.io/proxy-send-timeout": timeout,
        "nginx.ingress.kubernetes.io/proxy-body-size": str(ServerConfig().limits.max_body_bytes),
    }
    longer = find(render_objects({"ingress": {"enabled": True}, **with_server(limits={"request_timeout_s": 1200})}),
                  "Ingress")
    assert longer["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] == str(1200 + MARGIN)


def test_ingress_annotations_of_other_controllers():
    mine = {"nginx.ingress.kubernetes.io/proxy-read-timeout": "60", "example.com/x": "y"}
    assert ingress({"annotations": mine})["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"] \
        == "60"
    traefik = ingress({"streamingAnnotations": "none", "annotations": {"example.com/x": "y"}})
    assert traefik["metadata"]["annotations"] == {"example.com/x": "y"}


def test_ingress_routes_the_api_and_never_metrics():
    paths = ingress({})["spec"]["rules"][0]["http"]["paths"]
    assert [(p["path"], p["pathType"]) for p in paths] == [("/v1", "Prefix"), ("/health", "Exact"), ("/ready", "Exact")]
    assert all(p["backend"]["service"] == {"name": "demo-quantserve", "port": {"name": "http"}} for p in paths)
    import helm_python as helm

    for path in ("/", "/metrics"):
        with pytest.raises(helm.HelmRenderError, match="would expose /metrics"):
            render({"ingress": {"enabled": True, "paths": [{"path": path, "pathType": "Prefix"}]}})


def test_ingress_tls():
    tls = ingress({"host": "llm.example.org", "tls": {"enabled": True}})["spec"]["tls"]
    assert tls == [{"hosts": ["llm.example.org"], "secretName": "quantserve-tls"}]


# --- extension points ----------------------------------------------------------------------------------------------


def test_extension_points_reach_the_pods():
    objects = render_objects(EVERYTHING_ON)
    account = find(objects, "ServiceAccount")
    assert account["metadata"]["annotations"] == EVERYTHING_ON["serviceAccount"]["annotations"]
    head, cpu = ray_pod_specs(objects)
    for group, spec in (("head", head), ("cpu", cpu)):
        template = ray_cluster(objects)["headGroupSpec" if group == "head" else "workerGroupSpecs"]
        metadata = (template if group == "head" else template[0])["template"]["metadata"]
        assert metadata["labels"]["team"] == "ml" and metadata["annotations"]["example.com/owner"] == "ml-platform"
        assert spec["serviceAccountName"] == account["metadata"]["name"]
        for container in spec["containers"] + spec["initContainers"]:
            assert {"name": "AWS_REGION", "value": "eu-west-1"} in container["env"], container["name"]
    for key in ("tolerations", "affinity", "topologySpreadConstraints", "runtimeClassName"):
        assert cpu[key] == EVERYTHING_ON["cpuWorkers"][key]
        assert key not in head


def test_selector_labels_win_over_pod_labels():
    objects = render_objects({"podLabels": {"app.kubernetes.io/instance": "other"}})
    labels = ray_cluster(objects)["headGroupSpec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/instance"] == "demo"


# --- termination grace period --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        ({}, min(ServerConfig().drain_timeout_s, ServerConfig().limits.request_timeout_s) + MARGIN),
        ({"drain_timeout_s": 120}, 120 + MARGIN),
        ({"drain_timeout_s": 0.5}, 1 + MARGIN),
        ({"drain_timeout_s": 900, "limits": {"request_timeout_s": 600}}, 600 + MARGIN),  # no request runs longer
    ],
)
def test_grace_period_follows_the_drain_time(server, expected):
    config = {**CONFIG, "server": server}
    for spec in ray_pod_specs(render_objects({"quantserve": config})):
        assert spec["terminationGracePeriodSeconds"] == expected


# --- metrics -------------------------------------------------------------------------------------------------------


def test_every_quantserve_process_of_every_pod_writes_to_the_pods_metrics_folder():
    objects = render_objects()
    folder = yaml.safe_load((CHART / "values.yaml").read_text())["monitoring"]["exporter"]["multiprocessDir"]
    [app] = yaml.safe_load(find(objects, "RayService")["spec"]["serveConfigV2"])["applications"]
    assert app["runtime_env"]["env_vars"]["PROMETHEUS_MULTIPROC_DIR"] == folder  # router and every replica
    for spec in ray_pod_specs(objects):
        assert {"name": "metrics", "emptyDir": {}} in spec["volumes"]
        ray, exporter = spec["containers"]
        assert {"name": "metrics", "mountPath": folder} in ray["volumeMounts"]
        assert {"name": "metrics", "mountPath": folder} in exporter["volumeMounts"]
        assert {"name": "PROMETHEUS_MULTIPROC_DIR", "value": folder} in exporter["env"]
        assert exporter["command"][:2] == ["python", "/etc/quantserve/metrics_exporter.py"]
        assert spec["shareProcessNamespace"] is True  # the exporter tells live processes from dead ones
        # Ray's own processes keep their metrics to themselves (Ray's dashboard uses prometheus_client too).
        assert "PROMETHEUS_MULTIPROC_DIR" not in {e["name"] for e in ray["env"]}
    exporter_file = (CHART / "files" / "metrics_exporter.py").read_text()
    assert find(objects, "ConfigMap", "-config")["data"]["metrics_exporter.py"] == exporter_file


def test_router_metrics_are_scraped_from_the_metrics_service_only():
    """The API Service's /metrics is the router's, proxied by every pod: scraping it would count each request once per
    pod. The ServiceMonitor selects the metrics Service alone: every pod's exporter and Ray's port."""
    objects = render_objects(EVERYTHING_ON)
    monitor = find(objects, "ServiceMonitor")["spec"]
    services = [o for o in objects if o["kind"] == "Service"]
    selected = [s for s in services if monitor["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert [s["metadata"]["name"] for s in selected] == ["demo-quantserve-metrics"]
    [metrics_service] = selected
    assert metrics_service["spec"]["clusterIP"] == "None"  # one target per pod
    assert {p["name"] for p in metrics_service["spec"]["ports"]} == {e["port"] for e in monitor["endpoints"]}
    for endpoint in monitor["endpoints"]:
        assert endpoint["relabelings"] == [{"sourceLabels": ["__meta_kubernetes_pod_label_app_kubernetes_io_instance"],
                                            "targetLabel": "release"}]
