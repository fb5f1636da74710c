"""Parts of the vLLM backend that need no engine and no built model: the environment it is given and the
processor-sharing attribution of replica time."""

from __future__ import annotations

import pytest

from serving.engines.vllm_engine import ProcessorSharingClock, VllmEngineConfig, vllm_environment
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
