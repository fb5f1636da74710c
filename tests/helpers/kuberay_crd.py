"""Validate rendered KubeRay objects against KubeRay's own CRD schemas, as strictly as an API server stores them.

The CRDs (KubeRay v1.7.0, `ray.io_rayservices.yaml` and `ray.io_rayclusters.yaml`) are read from `../shared/kuberay/`
beside the repository; they are not copied into it. An API server silently prunes fields that a structural schema does
not know, so this turns every object schema without `x-kubernetes-preserve-unknown-fields` into one that forbids
unknown properties: a misspelt or misplaced field is an error here instead of a setting that quietly vanishes.
CEL rules (`x-kubernetes-validations`) are not evaluated.
"""

from __future__ import annotations

import functools

import jsonschema
import yaml

from tests.helpers import REPO

KUBERAY_DIR = REPO.parent / "shared" / "kuberay"
KUBERAY_VERSION = "1.7.0"
CRD_FILES = {"RayService": "ray.io_rayservices.yaml", "RayCluster": "ray.io_rayclusters.yaml"}
MISSING_REASON = f"KubeRay v{KUBERAY_VERSION} CRDs not found in {KUBERAY_DIR} (../shared/kuberay from the repo root)"


def crds_available() -> bool:
    return all((KUBERAY_DIR / name).is_file() for name in CRD_FILES.values())


def strict_schema(node: dict, *, root: bool = True) -> dict:
    """A copy of an OpenAPI v3 structural schema in which objects reject properties the schema does not list."""
    schema = dict(node)
    if schema.pop("nullable", False) and "type" in schema:
        schema["type"] = [schema["type"], "null"]
    if "properties" in schema:
        schema["properties"] = {
            # The API server treats the root metadata as an ObjectMeta, whatever the CRD says.
            key: value if (root and key == "metadata") else strict_schema(value, root=False)
            for key, value in schema["properties"].items()
        }
    if isinstance(schema.get("items"), dict):
        schema["items"] = strict_schema(schema["items"], root=False)
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = strict_schema(schema["additionalProperties"], root=False)
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            schema[key] = [strict_schema(part, root=False) for part in schema[key]]
    keeps_unknown = schema.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in schema
    if schema.get("type") == "object" and not keeps_unknown:
        schema["additionalProperties"] = False
    return schema


@functools.cache
def crd_validator(kind: str, version: str = "v1") -> jsonschema.Draft7Validator:
    crd = yaml.safe_load((KUBERAY_DIR / CRD_FILES[kind]).read_text())
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(strict_schema(served["schema"]["openAPIV3Schema"]))


def crd_errors(obj: dict) -> list[str]:
    """Where and why `obj` (a RayService or RayCluster) fails its KubeRay CRD schema; empty when it passes."""
    group, version = obj["apiVersion"].split("/")
    if group != "ray.io":
        raise ValueError(f"not a KubeRay object: {obj['apiVersion']}")
    validator = crd_validator(obj["kind"], version)
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


__all__ = ["KUBERAY_DIR", "KUBERAY_VERSION", "MISSING_REASON", "crd_errors", "crds_available", "strict_schema"]
