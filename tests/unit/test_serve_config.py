"""serving/serve_config.py: the Ray Serve config built from quantserve.yaml (Ray's own schema check: integration)."""

import pytest
import yaml

from quantserve.config import load_config, parse_config
from serving.serve_config import (
    APP_NAME,
    HAPROXY_ENV_VARS,
    IMPORT_PATH,
    THROUGHPUT_ENV_VARS,
    build_serve_config,
    logging_env_vars,
)
from tests.helpers import REPO


@pytest.fixture(scope="module")
def config():
    return load_config(REPO / "quantserve.yaml")


def test_one_application_at_the_root(config):
    serve_config = build_serve_config(config)
    [app] = serve_config["applications"]
    assert (app["name"], app["route_prefix"], app["import_path"]) == (APP_NAME, "/", IMPORT_PATH)
    assert serve_config["proxy_location"] == "EveryNode"
    assert serve_config["http_options"] == {"host": "0.0.0.0", "port": 8000}


def test_args_hold_the_config_as_written(config):
    [app] = build_serve_config(config)["applications"]
    assert app["args"]["config"] == yaml.safe_load((REPO / "quantserve.yaml").read_text())
    assert parse_config(app["args"]["config"]) == config


def test_args_survive_a_yaml_round_trip(config):
    """serveConfigV2 is a YAML string: what comes back must parse into the same config."""
    text = yaml.safe_dump(build_serve_config(config))
    [app] = yaml.safe_load(text)["applications"]
    assert parse_config(app["args"]["config"]) == config


def test_throughput_mode_is_the_default_and_can_be_turned_off(config):
    [fast] = build_serve_config(config)["applications"]
    [plain] = build_serve_config(config, throughput_optimized=False, haproxy=False)["applications"]
    [no_haproxy] = build_serve_config(config, haproxy=False)["applications"]
    logs = logging_env_vars(config.server.logging)
    assert fast["runtime_env"]["env_vars"] == {**THROUGHPUT_ENV_VARS, **HAPROXY_ENV_VARS, **logs}
    assert no_haproxy["runtime_env"]["env_vars"] == {**THROUGHPUT_ENV_VARS, **logs}
    assert plain["runtime_env"]["env_vars"] == logs
    assert logs == {"RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1"}  # lines written as they happen


def test_host_and_port(config):
    assert build_serve_config(config, host="127.0.0.1", port=18000)["http_options"] == {
        "host": "127.0.0.1",
        "port": 18000,
    }
