"""How the chart gets built variants into every Ray pod: pulled from object storage, built, or copied from the image,
into a node-local volume by default (no ReadWriteMany, no PersistentVolumeClaim unless asked)."""

import pytest
import yaml

from tests.helpers import REPO
from tests.helpers.helm_tools import (
    OBJECT_STORAGE,
    deep_merge,
    ray_cluster,
    ray_containers,
    ray_pod_specs,
    render_objects,
)

MODELS_PATH = "/app/models"
CONFIG_FILE = "/etc/quantserve/quantserve.yaml"


def kinds(objects):
    return {o["kind"] for o in objects}


def models_volume(spec):
    [volume] = [v for v in spec["volumes"] if v["name"] == "models"]
    return volume


def init_containers(spec):
    return {c["name"]: c for c in spec.get("initContainers", [])}


def test_default_builds_in_every_pod_into_an_emptydir():
    objects = render_objects()
    assert "PersistentVolumeClaim" not in kinds(objects)
    for spec in ray_pod_specs(objects):
        build = init_containers(spec)["models-build"]
        assert build["command"] == ["quantserve", "quantize", "build", "--config", CONFIG_FILE, "--variants", "all"]
        assert {"name": "models", "mountPath": MODELS_PATH} in build["volumeMounts"]
        assert models_volume(spec) == {"name": "models", "emptyDir": {"sizeLimit": "20Gi"}}


def test_object_storage_pulls_in_every_pod_and_asks_for_no_claim():
    objects = render_objects(OBJECT_STORAGE)
    assert "PersistentVolumeClaim" not in kinds(objects)
    specs = ray_pod_specs(objects)
    assert len(specs) == 2  # head and the CPU workers: every pod that may read the variants
    for spec in specs:
        assert set(init_containers(spec)) == {"models-pull"}
        pull = init_containers(spec)["models-pull"]
        assert pull["command"] == ["quantserve", "quantize", "pull", "s3://quantserve-models/smollm2/0.1.0",
                                   "--config", CONFIG_FILE]
        assert pull["envFrom"] == [{"secretRef": {"name": "quantserve-s3"}}]
        assert "QUANTSERVE_API_KEYS" not in {e["name"] for e in pull["env"]}  # the pull needs no API keys
        assert "emptyDir" in models_volume(spec)


def test_pull_environment_and_identity():
    values = deep_merge(OBJECT_STORAGE, {"models": {"pull": {"credentialsSecret": "", "env": [
        {"name": "AWS_ENDPOINT_URL", "value": "http://minio.storage:9000"}]}},
        "serviceAccount": {"name": "models-reader"}})
    for spec in ray_pod_specs(render_objects(values)):
        pull = init_containers(spec)["models-pull"]
        assert "envFrom" not in pull
        assert {"name": "AWS_ENDPOINT_URL", "value": "http://minio.storage:9000"} in pull["env"]
        assert spec["serviceAccountName"] == "models-reader"


def test_pull_needs_a_uri():
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="models.pull.uri"):
        render_objects({"models": {"source": "pull"}})


def test_ephemeral_claims_one_volume_per_pod():
    objects = render_objects({"models": {"volume": {"type": "ephemeral", "storageClassName": "fast-ssd"}}})
    assert "PersistentVolumeClaim" not in kinds(objects)
    for spec in ray_pod_specs(objects):
        claim = models_volume(spec)["ephemeral"]["volumeClaimTemplate"]["spec"]
        assert claim == {"accessModes": ["ReadWriteOnce"], "storageClassName": "fast-ssd",
                         "resources": {"requests": {"storage": "20Gi"}}}
        assert "models-build" in init_containers(spec)


def test_a_shared_claim_only_when_asked_and_filled_by_the_head():
    objects = render_objects({"models": {"volume": {"type": "claim", "accessModes": ["ReadWriteMany"]}}})
    [claim] = [o for o in objects if o["kind"] == "PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    head, *workers = ray_pod_specs(objects)
    assert set(init_containers(head)) == {"models-build"}
    for spec in [head, *workers]:
        assert models_volume(spec)["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}
    assert all(not init_containers(spec) for spec in workers)


def test_an_existing_claim_that_already_holds_the_variants():
    objects = render_objects({"models": {"source": "none", "volume": {"type": "claim", "existingClaim": "models"}}})
    assert "PersistentVolumeClaim" not in kinds(objects)
    for spec in ray_pod_specs(objects):
        assert "initContainers" not in spec
        assert models_volume(spec)["persistentVolumeClaim"] == {"claimName": "models"}


def test_variants_baked_into_the_image_are_copied_into_the_volume():
    for spec in ray_pod_specs(render_objects({"models": {"source": "image"}})):
        copy = init_containers(spec)["models-image"]
        assert copy["command"] == ["cp", "-a", f"{MODELS_PATH}/.", "/mnt/models/"]
        assert copy["volumeMounts"] == [{"name": "models", "mountPath": "/mnt/models"}]  # the image's folder shows


def test_engine_caches_are_writable():
    """vLLM keeps its compile cache under models_dir/<model>/.cache: the Ray containers mount the models volume
    writable (their pod's own copy), and the root filesystem stays read-only."""
    for values in ({}, OBJECT_STORAGE, {"models": {"volume": {"type": "claim"}}}):
        for container in ray_containers(render_objects(values)):
            [mount] = [m for m in container["volumeMounts"] if m["name"] == "models"]
            assert mount == {"name": "models", "mountPath": MODELS_PATH}
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_an_absolute_models_dir_is_mounted_as_is():
    config = {**yaml.safe_load((REPO / "quantserve.yaml").read_text()), "models_dir": "/data/models"}
    for container in ray_containers(render_objects({"quantserve": config})):
        assert {"name": "models", "mountPath": "/data/models"} in container["volumeMounts"]


def test_changing_the_artefacts_rolls_the_ray_cluster():
    """The pods carry a hash of what the init container reads: a new URI means new pods, which pull it."""
    def annotation(values):
        return ray_cluster(render_objects(values))["headGroupSpec"]["template"]["metadata"]["annotations"][
            "checksum/build-inputs"]

    other_uri = deep_merge(OBJECT_STORAGE, {"models": {"pull": {"uri": "s3://quantserve-models/smollm2/0.2.0"}}})
    assert annotation(OBJECT_STORAGE) != annotation(other_uri)
    assert annotation(OBJECT_STORAGE) == annotation(deep_merge(OBJECT_STORAGE, {"serve": {"port": 9000}}))
