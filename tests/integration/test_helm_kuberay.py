"""Every rendered RayService against KubeRay's own RayService CRD (v1.7.0, from ../shared/kuberay), with fields the CRD
does not know treated as errors (an API server would drop them silently), and its pod templates as core/v1 ones."""

import copy

import pytest

from tests.helpers.helm_tools import (
    EVERYTHING_ON,
    PROFILES,
    deep_merge,
    find,
    profile_values,
    render_objects,
    validate_rayservice_pods,
)
from tests.helpers.kuberay_crd import MISSING_REASON, crd_errors, crds_available

needs_crds = pytest.mark.skipif(not crds_available(), reason=MISSING_REASON)
# Renders beyond the profiles: the other ways to hold the variants, and everything optional off.
MODEL_VOLUMES = {
    "ephemeral": {"models": {"volume": {"type": "ephemeral", "storageClassName": "fast-ssd"}}},
    "claim": {"models": {"volume": {"type": "claim", "accessModes": ["ReadWriteMany"]}}},
    "image": {"models": {"source": "image"}},
    "minimal": {"models": {"source": "none"}, "ray": {"autoscaling": {"enabled": False}},
                "apiKeys": {"enabled": False}, "probes": {"readiness": {"enabled": False}}},
}


def rayservice(values: dict) -> dict:
    return find(render_objects(values), "RayService")


@needs_crds
@pytest.mark.parametrize("everything", [False, True], ids=["plain", "everything-on"])
@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_validate_against_the_kuberay_crd(profile, everything):
    values = profile_values(profile, **EVERYTHING_ON) if everything else profile_values(profile)
    assert crd_errors(rayservice(values)) == []


@needs_crds
@pytest.mark.parametrize("variation", MODEL_VOLUMES)
def test_model_volume_variations_validate_against_the_kuberay_crd(variation):
    assert crd_errors(rayservice(deep_merge(EVERYTHING_ON, MODEL_VOLUMES[variation]))) == []


@pytest.mark.parametrize("profile", PROFILES)
def test_pod_templates_validate_as_core_v1(profile):
    validate_rayservice_pods(rayservice(profile_values(profile, **EVERYTHING_ON)))


@needs_crds
def test_unknown_fields_are_errors_where_the_api_server_would_drop_them():
    original = rayservice(EVERYTHING_ON)
    cluster = copy.deepcopy(original)
    cluster["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplica"] = 3  # a typo of maxReplicas
    pod = copy.deepcopy(original)
    pod["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["envFrom2"] = []
    assert crd_errors(cluster) == [
        "spec/rayClusterConfig/workerGroupSpecs/0: Additional properties are not allowed ('maxReplica' was unexpected)"]
    assert crd_errors(pod) == ["spec/rayClusterConfig/headGroupSpec/template/spec/containers/0: Additional properties "
                               "are not allowed ('envFrom2' was unexpected)"]


@needs_crds
def test_wrong_types_are_errors():
    service = rayservice({})
    service["spec"]["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["num-cpus"] = 0  # must be a string
    assert crd_errors(service) == ["spec/rayClusterConfig/headGroupSpec/rayStartParams/num-cpus: 0 is not of type "
                                   "'string'"]


@needs_crds
def test_free_form_fields_stay_free():
    """serveConfigV2 is a string and pod annotations a map: nothing in them is checked field by field."""
    service = rayservice({"podAnnotations": {"example.com/anything": "goes"}})
    assert crd_errors(service) == []
    assert "example.com/anything" in service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"][
        "annotations"]
