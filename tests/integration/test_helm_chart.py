"""The Helm chart, rendered by a real Helm and validated against Kubernetes, prometheus-operator and Ray schemas."""

import shutil

import pytest
import yaml

from quantserve.config import load_config, parse_config  # noqa: E402
from serving.serve_config import build_serve_config  # noqa: E402
from tests.helpers.helm_tools import (
    CHART,
    EVERYTHING_ON,
    PROFILES,
    REPO,
    find,
    lint,
    load_sync_script,
    profile_values,
    ray_cluster,
    ray_containers,
    render,
    render_objects,
    schema_error,
    serve_config,
    validate_builtin,
    validate_prometheus_operator,
    workers,
)

PROMETHEUS_OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
METRICS_DIR = VALUES["monitoring"]["exporter"]["multiprocessDir"]


def builder_view(serve_config: dict) -> dict:
    """The rendered Serve config less what only the chart adds: the pods' metrics folder, in every process's env."""
    [app] = serve_config["applications"]
    assert app["runtime_env"]["env_vars"].pop("PROMETHEUS_MULTIPROC_DIR") == METRICS_DIR
    return serve_config


# --- one source of truth -------------------------------------------------------------------------------------------


def test_values_hold_quantserve_yaml():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["quantserve"] == yaml.safe_load((REPO / "quantserve.yaml").read_text())


def test_gpu_values_hold_quantserve_gpu_yaml():
    values = yaml.safe_load((CHART / "values-gpu.yaml").read_text())
    assert values["quantserve"] == yaml.safe_load((REPO / "quantserve.gpu.yaml").read_text())


def test_generated_parts_are_up_to_date():
    assert load_sync_script().sync(REPO / "quantserve.yaml", check=True) == []


def test_sync_notices_a_changed_config(tmp_path):
    changed = tmp_path / "quantserve.yaml"
    changed.write_text(
        (REPO / "quantserve.yaml").read_text().replace("default_variant: onnx-int4", "default_variant: onnx-int8")
    )
    assert load_sync_script().sync(changed, check=True) == ["helm/quantserve/values.yaml"]


def test_serve_config_equals_the_builder():
    """With default values the rendered serveConfigV2 is exactly what `build_serve_config` makes of quantserve.yaml,
    plus the pods' metrics folder (PROMETHEUS_MULTIPROC_DIR) in the application's runtime_env.

    Values that deliberately change it: serve.port (http_options.port), serve.throughputOptimized (runtime_env), and
    serve.variants (serve.enabled per variant); the tests below cover each.
    """
    assert builder_view(serve_config(render_objects())) == build_serve_config(load_config(REPO / "quantserve.yaml"))


CONFIG_OF_PROFILE = {"default": "quantserve.yaml", "cpu": "quantserve.yaml", "gpu": "quantserve.gpu.yaml",
                     "object-storage": "quantserve.yaml"}


@pytest.mark.parametrize("profile", PROFILES)
def test_serve_config_parses_into_the_config_model(profile):
    [app] = serve_config(render_objects(profile_values(profile)))["applications"]
    assert parse_config(app["args"]["config"]) == load_config(REPO / CONFIG_OF_PROFILE[profile])
    assert app["import_path"] == "serving.app:build_app"


def test_ray_accepts_the_serve_config():
    from ray.serve.schema import ServeDeploySchema

    rendered = serve_config(render_objects())
    parsed = ServeDeploySchema.model_validate(rendered)
    assert parsed.model_dump(exclude_unset=True).keys() == rendered.keys()


def test_port_and_throughput_mode_follow_values():
    objects = render_objects({"serve": {"port": 9000, "throughputOptimized": False}})
    config = builder_view(serve_config(objects))
    assert config == build_serve_config(load_config(REPO / "quantserve.yaml"), port=9000, throughput_optimized=False)
    for container in ray_containers(objects):
        names = {env["name"] for env in container["env"]}
        assert "RAY_SERVE_THROUGHPUT_OPTIMIZED" not in names and "RAY_SERVE_ENABLE_HA_PROXY" in names
        assert {"name": "serve", "containerPort": 9000} in container["ports"]


def test_router_replicas_and_autoscaling_follow_values():
    """`quantserve.router` reaches the builder: the router deployment's replicas or autoscaling bounds, and the
    shared rate-limit store that more than one router needs."""
    from serving.app import rate_limit_store, router_options

    scaling = {"min_replicas": 2, "max_replicas": 6, "target_ongoing_requests": 64}
    for router, expected in (({"replicas": 3}, {"num_replicas": 3}), ({"autoscaling": scaling},
                                                                      {"autoscaling_config": scaling})):
        [app] = serve_config(render_objects({"quantserve": {"router": router}}))["applications"]
        config = parse_config(app["args"]["config"])
        options = router_options(config.router, config.server.limits, {})
        assert expected.items() <= options.items()
        assert rate_limit_store(config, {}) is not None
    assert rate_limit_store(load_config(REPO / "quantserve.yaml"), {}) is None  # one router: buckets in-process


def test_haproxy_follows_its_own_value():
    objects = render_objects({"serve": {"haproxy": False}})
    config = load_config(REPO / "quantserve.yaml")
    assert builder_view(serve_config(objects)) == build_serve_config(config, haproxy=False)
    for container in ray_containers(objects):
        assert "RAY_SERVE_ENABLE_HA_PROXY" not in {env["name"] for env in container["env"]}


def test_throughput_mode_is_in_every_ray_pod_by_default():
    for container in ray_containers(render_objects()):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


def test_served_variants_set_serve_enabled():
    [app] = serve_config(render_objects({"serve": {"variants": ["smollm2-135m:onnx-int4"]}}))["applications"]
    config = parse_config(app["args"]["config"])
    enabled = {f"{m.name}:{v.name}" for m in config.models for v in m.variants if v.serve.enabled}
    assert enabled == {"smollm2-135m:onnx-int4"}


# --- lint and schemas ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES)
def test_lint_is_clean(profile):
    report = lint(profile_values(profile, **EVERYTHING_ON))
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []  # 1 is info ("icon is recommended")


@pytest.mark.parametrize("profile", PROFILES)
def test_every_object_validates(profile):
    objects = render_objects(profile_values(profile, **EVERYTHING_ON))
    kinds = set()
    for obj in objects:
        kinds.add(obj["kind"])
        if obj["kind"] in PROMETHEUS_OPERATOR_KINDS:
            validate_prometheus_operator(obj)
        elif obj["kind"] == "RayService":
            continue  # against KubeRay's CRD and as pod templates: tests/integration/test_helm_kuberay.py
        else:
            validate_builtin(obj)
    assert {"RayService", "Service", "Ingress", "Secret", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert PROMETHEUS_OPERATOR_KINDS | {"ConfigMap", "ServiceAccount"} <= kinds


def test_validation_catches_an_unknown_field():
    service = find(render_objects(), "Service", "quantserve")
    with pytest.raises(Exception, match="bogus"):
        validate_builtin({**service, "spec": {**service["spec"], "bogus": 1}})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"cpuWorkers": {"replicas": -1}}, "at '/cpuWorkers/replicas': minimum: got -1, want 0"),
        ({"gpuWorkers": {"maxReplicas": -2}}, "at '/gpuWorkers/maxReplicas': minimum: got -2, want 0"),
        (
            {"gpuWorkers": {"enabled": True}, "image": {"flavor": "gpu"}},
            "at '/gpuWorkers/gpus': minimum: got 0, want 1",
        ),
        ({"gpuWorkers": {"enabled": True, "gpus": 1}}, "at '/image/flavor': value must be 'gpu'"),
        ({"serve": {"variants": ["smollm2-135m:onnx-int3"]}}, "at '/serve/variants/0': value must be one of"),
        ({"cpuWorkers": {"replicas": 1, "replica": 2}}, "additional properties 'replica' not allowed"),
        ({"quantserve": {"models_dir": 5}}, "at '/quantserve/models_dir'"),
        ({"quantserve": {"router": {"replicas": 0}}}, "at '/quantserve/router/replicas': minimum: got 0, want 1"),
        ({"models": {"source": "pull"}}, "at '/models/pull/uri': minLength: got 0, want 1"),
        ({"models": {"volume": {"type": "hostPath"}}}, "at '/models/volume/type': value must be one of"),
        ({"extraEnv": [{"value": "x"}]}, "at '/extraEnv/0': missing property 'name'"),
    ],
)
def test_schema_rejects_bad_values(values, message):
    assert message in schema_error(values)


def test_schema_accepts_the_profiles():
    assert {p: schema_error(profile_values(p, **EVERYTHING_ON)) for p in PROFILES} == dict.fromkeys(PROFILES, "")


def test_schema_checks_the_config_block():
    """The quantserve block is checked against serving/config.py's model: a negative variant replica count fails."""
    config = yaml.safe_load((REPO / "quantserve.yaml").read_text())
    config["models"][0]["variants"][0]["serve"]["replicas"] = -1
    assert "/quantserve/models/0/variants/0/serve/replicas" in schema_error({"quantserve": config})


def test_unknown_variant_fails_the_render_even_without_the_schema(tmp_path):
    """`helm install --skip-schema-validation` (say, for a config whose ids the shipped schema does not list) still
    rejects a served id that the config lacks: the template checks it too. Here: a copy of the chart without schema."""
    import helm_python as helm

    shutil.copytree(CHART, tmp_path / "quantserve")
    (tmp_path / "quantserve" / "values.schema.json").unlink()
    with helm.Chart.load(tmp_path / "quantserve") as chart, pytest.raises(helm.HelmRenderError) as failure:
        chart.render(values={"serve": {"variants": ["nope:nope"]}}, name="demo", namespace="ml")
    assert 'serve.variants: unknown variant "nope:nope"; the quantserve config has smollm2-135m:onnx-fp32' in str(
        failure.value
    )


def test_min_above_max_replicas_fails():
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError, match=r"cpuWorkers: minReplicas \(5\) exceeds maxReplicas \(4\)"):
        render({"cpuWorkers": {"minReplicas": 5}})


# --- resources -----------------------------------------------------------------------------------------------------


def test_gpu_profile_adds_a_gpu_group():
    objects = render_objects(profile_values("gpu"))
    gpu = workers(objects, "gpu")
    container, _exporter = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith(":0.1.0-gpu")
    assert gpu["rayStartParams"]["num-gpus"] == "1"
    assert gpu["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    gpu_taint = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert gpu_taint in gpu["template"]["spec"]["tolerations"]
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, 2)


def test_cpu_profiles_have_no_gpu():
    for profile in ("default", "cpu"):
        objects = render_objects(profile_values(profile))
        assert [g["groupName"] for g in ray_cluster(objects)["workerGroupSpecs"]] == ["cpu"]
        assert "nvidia.com/gpu" not in str(objects)


def test_autoscaling_bounds_follow_values():
    objects = render_objects({"cpuWorkers": {"replicas": 3, "minReplicas": 2, "maxReplicas": 6}})
    cpu = workers(objects, "cpu")
    assert (cpu["replicas"], cpu["minReplicas"], cpu["maxReplicas"]) == (3, 2, 6)
    assert ray_cluster(objects)["enableInTreeAutoscaling"] is True
    off = ray_cluster(render_objects({"ray": {"autoscaling": {"enabled": False}}}))
    assert off["enableInTreeAutoscaling"] is False and "autoscalerOptions" not in off


def test_service_selects_the_ray_pods():
    objects = render_objects()
    selector = find(objects, "Service", "quantserve")["spec"]["selector"]
    assert selector.pop("ray.io/serve") == "true"
    cluster = ray_cluster(objects)
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        assert selector.items() <= group["template"]["metadata"]["labels"].items()
    assert find(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector


def test_ingress_is_optional_and_serves_tls():
    assert not [o for o in render_objects() if o["kind"] == "Ingress"]
    values = {"ingress": {"enabled": True, "host": "llm.example.org", "tls": {"enabled": True}}}
    ingress = find(render_objects(values), "Ingress")
    assert ingress["spec"]["tls"] == [{"hosts": ["llm.example.org"], "secretName": "quantserve-tls"}]
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "demo-quantserve", "port": {"name": "http"}}


def test_probes_on_workers_only():
    objects = render_objects({"probes": {"liveness": {"enabled": True}}})
    head, *worker_containers = ray_containers(objects)
    assert not {"readinessProbe", "livenessProbe", "startupProbe"} & head.keys()
    for container in worker_containers:
        assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "serve"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "serve"}
        assert container["startupProbe"]["failureThreshold"] == 90
    assert "livenessProbe" not in ray_containers(render_objects())[1]


def test_pods_run_non_root_with_read_only_root():
    cluster = ray_cluster(render_objects(profile_values("gpu")))
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        spec = group["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"] + spec.get("initContainers", []):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_monitoring_is_off_by_default_and_complete_when_on():
    kinds = {o["kind"] for o in render_objects()}
    assert not kinds & PROMETHEUS_OPERATOR_KINDS
    objects = render_objects(EVERYTHING_ON)
    monitor = find(objects, "ServiceMonitor")
    service_ports = {p["name"] for o in objects if o["kind"] == "Service" for p in o["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"qs-metrics", "ray-metrics"} <= service_ports
    rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert find(objects, "PrometheusRule")["spec"] == {"groups": rules["groups"]}
    dashboard = find(objects, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert yaml.safe_load(dashboard["data"]["quantserve.json"]) == yaml.safe_load(
        (CHART / "files" / "grafana-dashboard.json").read_text()
    )


def test_names_fit_kubernetes_limits():
    objects = render_objects(name="a-long-release-name-of-exactly-fifty-three-characters")
    assert all(len(o["metadata"]["name"]) <= 63 for o in objects)
    assert len(find(objects, "RayService")["metadata"]["name"]) <= 40


def test_notes_tell_how_to_call_the_api():
    notes = render()["quantserve/templates/NOTES.txt"]
    assert "kubectl -n ml port-forward svc/demo-quantserve 8000:8000" in notes
    assert '"model": "smollm2-135m:onnx-int4"' in notes
    ingress_notes = render({"ingress": {"enabled": True, "tls": {"enabled": True}}})["quantserve/templates/NOTES.txt"]
    assert "BASE=https://quantserve.example.com" in ingress_notes


def test_dockerfile_matches_the_chart():
    """The image is not built here (no container engine); check what the chart relies on: the flavours image.flavor
    names, the working dir, the user the pods run as, and haproxy in the image Ray runs in (the runtime stage)."""
    dockerfile = (REPO / "Dockerfile").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert "ARG FLAVOR=cpu" in dockerfile and "AS base-cpu" in dockerfile and "AS base-gpu" in dockerfile
    runtime = dockerfile.rsplit("AS runtime", 1)[-1]
    assert f"WORKDIR {values['image']['workingDir']}\n" in runtime
    assert f"USER {values['podSecurityContext']['runAsUser']}:" in runtime
    assert "haproxy" in runtime.split("apt-get install", 1)[-1].splitlines()[0]


def test_only_build_changes_roll_the_ray_cluster():
    """KubeRay updates Serve in place when only serveConfigV2 changes, and starts a new cluster when pods change."""
    config = yaml.safe_load((REPO / "quantserve.yaml").read_text())
    serve_change = yaml.safe_load(yaml.safe_dump(config))
    serve_change["models"][0]["variants"][0]["serve"]["replicas"] = 3
    build_change = yaml.safe_load(yaml.safe_dump(config))
    build_change["models"][0]["variants"][0]["build"]["precision"] = "int8"

    def clusters(quantserve):
        return ray_cluster(render_objects({"quantserve": quantserve}))

    assert clusters(serve_change) == clusters(config) != clusters(build_change)
