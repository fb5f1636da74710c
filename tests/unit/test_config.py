"""The one config model: the shipped file parses, and mistakes are reported on one line with their place."""

import pytest
import yaml

from quantserve.config import ConfigError, load_config, parse_config

BASE = {"models": [{"name": "m", "source": "x.gguf", "default_variant": "a",
                    "variants": [{"name": "a", "build": {"method": "onnx", "precision": "int4"}}]}]}


def with_variant(**changes) -> dict:
    config = yaml.safe_load(yaml.safe_dump(BASE))
    config["models"][0]["variants"][0].update(changes)
    return config


def test_the_shipped_config_parses():
    config = load_config("quantserve.yaml")
    chat = config.model("smollm2-135m")
    assert chat.default_variant in [v.name for v in chat.variants]
    assert {v.build.method for v in chat.variants} == {"onnx", "blockwise", "gptq", "base"}
    assert {v.serve.backend for v in chat.variants} == {"onnx", "vllm"}


def test_the_gpu_config_builds_what_the_cpu_config_builds_and_serves_vllm_on_gpus():
    cpu, gpu = load_config("quantserve.yaml"), load_config("quantserve.gpu.yaml")
    assert [(m.name, m.source, [(v.name, v.build) for v in m.variants]) for m in cpu.models] == \
        [(m.name, m.source, [(v.name, v.build) for v in m.variants]) for m in gpu.models]
    served = {v.name: v.serve for v in gpu.model("smollm2-135m").variants}
    assert served["gptq-int4"].backend == served["vllm"].backend == "vllm"
    assert served["gptq-int4"].num_gpus >= 1 and served["vllm"].num_gpus >= 1


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (with_variant(build={"method": "onnx", "precision": "int4", "block_size": 48}), "power of two"),
        (with_variant(build={"method": "onnx", "precision": "int3"}), "precision"),
        (with_variant(build={"method": "quux"}), "method"),
        (with_variant(serve={"fallbacks": ["nope"]}), "falls back to unknown 'nope'"),
        (with_variant(serve={"replicas": -1}), "replicas"),
        (with_variant(serve={"autoscaling": {"min_replicas": 3, "max_replicas": 1}}), "exceeds max_replicas"),
        (with_variant(colour="blue"), "colour"),
        (with_variant(build={"method": "base"}), "only the vllm backend loads"),
        (with_variant(serve={"backend": "vllm", "vllm": {"tensor_parallel_size": 2}}), "one GPU per shard"),
        (with_variant(serve={"backend": "vllm", "vllm": {"dtype": "int3"}}), "dtype"),
        ({**BASE, "server": {"rate_limits": {"requests_per_minute": 0}}}, "requests_per_minute"),
        ({**BASE, "server": {"logging": {"format": "xml"}}}, "format"),
        ({**BASE, "router": {"replicas": 0}}, "router.replicas"),
        ({**BASE, "router": {"autoscaling": {"min_replicas": 0, "max_replicas": 2}}}, "no replica, no ingress"),
        ({**BASE, "models": [{**BASE["models"][0], "default_variant": "zz"}]}, "default_variant 'zz'"),
    ],
)
def test_mistakes_are_one_line_and_name_the_problem(config, expected):
    with pytest.raises(ConfigError) as error:
        parse_config(config, origin="test.yaml")
    message = str(error.value)
    assert expected in message
    assert "\n" not in message and message.startswith("test.yaml: ")


def test_a_missing_file_says_how_to_point_at_another(tmp_path):
    with pytest.raises(ConfigError, match="not found; pass --config"):
        load_config(tmp_path / "absent.yaml")


def test_one_router_replica_by_default_and_the_most_it_may_run():
    assert parse_config(BASE).router.max_replicas == 1
    assert parse_config({**BASE, "router": {"replicas": 3}}).router.max_replicas == 3
    scaled = parse_config({**BASE, "router": {"replicas": 3, "autoscaling": {"min_replicas": 1, "max_replicas": 5}}})
    assert scaled.router.max_replicas == 5  # autoscaling replaces the fixed count
