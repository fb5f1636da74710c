"""Parts of the vLLM backend that need no engine and no built model: the environment it is given and the
processor-sharing attribution of replica time."""

from __future__ import annotations

import pytest

from serving.engines.base import SamplingParams
from serving.engines.vllm_engine import (
    ProcessorSharingClock,
    VllmEngineConfig,
    vllm_environment,
    vllm_sampling_arguments,
)
from tests.helpers import HandClock


def test_two_overlapping_requests_share_the_busy_time():
    time = HandClock()
    clock = ProcessorSharingClock(time)
    first = clock.enter()
    time.now += 2  # alone for 2 s
    second = clock.enter()
    time.now += 4  # together for 4 s: 2 s each
    first_share = clock.since(first)
    clock.leave()
    time.now += 1  # the second alone for 1 s
    second_share = clock.since(second)
    clock.leave()
    time.now += 10  # idle: charged to nobody
    assert first_share == pytest.approx(4.0) and second_share == pytest.approx(3.0)
    assert clock.busy_seconds == pytest.approx(7.0) == pytest.approx(first_share + second_share)


def test_environment_keeps_vllm_on_loopback_offline_and_caches_in_the_project(tmp_path):
    env = vllm_environment(VllmEngineConfig(tmp_path, kv_cache_gib=3, cache_dir=tmp_path / "cache"))
    assert env["VLLM_HOST_IP"] == "127.0.0.1" and env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3" and env["VLLM_CACHE_ROOT"] == str(tmp_path / "cache")


def test_vllm_gets_the_same_sampling_rules_as_the_onnx_engine():
    """Fails before this change (no vllm_sampling_arguments: a tiny temperature went to vLLM, which raises it to
    0.01, a seed of -1 meant "no seed" to vLLM, and the vLLM extensions were not passed)."""
    arguments = vllm_sampling_arguments(SamplingParams(temperature=1e-38, seed=-1, top_k=None, min_p=0.1,
                                                       repetition_penalty=1.2, min_tokens=3, ignore_eos=True,
                                                       prompt_logprobs=2), max_tokens=10)
    assert arguments["temperature"] == 0.0 and arguments["top_k"] == 0
    assert arguments["seed"] == (-1) % 2**63 and arguments["seed"] >= 0
    assert (arguments["min_p"], arguments["repetition_penalty"], arguments["min_tokens"]) == (0.1, 1.2, 3)
    assert arguments["ignore_eos"] is True and arguments["prompt_logprobs"] == 2 and arguments["max_tokens"] == 10
    huge = vllm_sampling_arguments(SamplingParams(seed=2**63 + 5), max_tokens=1)["seed"]
    assert 0 <= huge < 2**63  # the router adds the choice index to a seed: it may pass 2**63 - 1
    assert vllm_sampling_arguments(SamplingParams(max_tokens=0, prompt_logprobs=0), max_tokens=0)["max_tokens"] == 1
