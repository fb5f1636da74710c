"""What a replica decides on its own: the dtype vLLM computes in on this CPU, and whether its engine is stuck
(serving.vllm_dtype, serving.stall). Both are new: the previous code gave vLLM the configured dtype as is and
reported an ONNX replica healthy whatever its model thread did."""

from __future__ import annotations

import asyncio

import pytest

from serving import protocol as p
from serving.engines.base import EngineStats
from serving.stall import ProgressWatch, StallGuard
from serving.vllm_dtype import cpu_flags, vllm_dtype
from tests.helpers import HandClock

CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 {extra}\nbugs\t\t: spectre\n"


@pytest.mark.parametrize(("extra", "expected"), [("", "float32"), ("avx512f avx512_bf16", "bfloat16"),
                                                 ("amx_tile amx_bf16", "bfloat16"), ("avx512f avx512_vnni", "float32")])
def test_auto_is_bfloat16_only_on_a_cpu_with_bfloat16_instructions(tmp_path, extra, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra=extra))
    assert vllm_dtype("auto", on_gpu=False, flags=cpu_flags(cpuinfo)) == expected


def test_a_configured_dtype_and_a_gpu_are_left_as_they_are(tmp_path):
    assert vllm_dtype("bfloat16", on_gpu=False, flags=set()) == "bfloat16"
    assert vllm_dtype("auto", on_gpu=True, flags=set()) == "auto"  # vLLM's own auto on a GPU
    assert cpu_flags(tmp_path / "missing") == set()


def stats(tokens: int, busy: float, running: int = 1, waiting: int = 0) -> EngineStats:
    return EngineStats(running=running, waiting=waiting, slots=4, context_length=64, generated_tokens_total=tokens,
                       ready=True, busy_seconds_total=busy)


def test_an_engine_is_stalled_only_when_work_waits_and_its_counters_stand_still():
    clock = HandClock()
    watch = ProgressWatch(10, clock)
    watch.observe(stats(5, 1.0))
    clock.now += 9
    watch.observe(stats(5, 1.0))
    assert watch.stalled_for() is None
    clock.now += 2
    assert watch.stalled_for() == pytest.approx(11)
    watch.observe(stats(5, 1.5))  # a step ended: progress
    assert watch.stalled_for() is None
    clock.now += 30
    watch.observe(stats(5, 1.5, running=0))  # nothing to do is not a stall
    assert watch.stalled_for() is None


def test_a_tripped_guard_ends_a_waiting_stream_with_503_and_refuses_to_start_one():
    async def scenario():
        guard, started = StallGuard(), asyncio.Event()

        async def engine_outputs():
            yield "first"
            started.set()
            await asyncio.sleep(3600)  # the stuck engine: the next output never comes
            yield "never"

        received = []

        async def consume():
            async for output in guard.guarded(engine_outputs()):
                received.append(output)

        task = asyncio.create_task(consume())
        await started.wait()
        guard.trip("no progress for 11 s")
        with pytest.raises(p.ApiError) as ended:
            await asyncio.wait_for(task, 5)
        assert received == ["first"] and ended.value.status == 503 and ended.value.code == "replica_stalled"
        with pytest.raises(p.ApiError):
            async for _ in guard.guarded(engine_outputs()):
                pass

    asyncio.run(scenario())
