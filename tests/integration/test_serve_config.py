"""Ray Serve's own schema accepts the serve config that serving/serve_config.py builds."""

import pytest
from ray.serve import schema

from quantserve.config import load_config
from serving.serve_config import build_serve_config
from tests.helpers import REPO


@pytest.fixture(scope="module")
def config():
    return load_config(REPO / "quantserve.yaml")


def test_ray_accepts_the_structure(config):
    built = build_serve_config(config)
    parsed = schema.ServeDeploySchema.model_validate(built)
    # Ray's schema ignores unknown keys, so also check that every key we write is one Ray knows.
    assert parsed.model_dump(exclude_unset=True).keys() == built.keys()
    assert parsed.applications[0].model_dump(exclude_unset=True).keys() == built["applications"][0].keys()
    assert parsed.applications[0].args == {"config": built["applications"][0]["args"]["config"]}
