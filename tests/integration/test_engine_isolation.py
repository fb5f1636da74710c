"""A failing request ends alone: the continuous batcher with the real ONNX fp32 model (no Ray, no HTTP).

These fail on the batcher before this change: a failure in one sequence's sampling ended every running
sequence with a 500 (a temperature of 1e-38 did it: `logits / temperature` overflowed and `rng.choice` raised),
and when the first of two requests admitted together failed in prefill, the second waited out its timeout.
The failures that no request can cause any more come from the batcher's `fault_hook`, a test-only setting
(None in service) whose exception becomes the failure of the sequence it was called with."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from serving.engines.base import EngineError, SamplingParams
from serving.engines.onnx_engine import OnnxEngine, OnnxEngineConfig, collect
from tests.helpers import wait_for

QUESTIONS = ["What is the capital of France?", "Write a haiku about autumn leaves.", "Why is the sky blue?",
             "How do I boil an egg?"]
STREAM = SamplingParams(max_tokens=40, temperature=0)
DEADLINE_SECONDS = 120  # far above what these requests take; a stranded request would wait forever


@pytest.fixture(scope="module")
def engine(built_models: Path):
    engine = OnnxEngine(OnnxEngineConfig(built_models / "smollm2-135m" / "onnx-fp32", max_batch_size=4,
                                         max_queue=8, context_length=512))
    yield engine
    engine.shutdown()


@pytest.fixture(autouse=True)
def no_fault(engine: OnnxEngine):
    yield
    engine.batcher.fault_hook = None


@pytest.fixture(scope="module")
def prompts(engine: OnnxEngine) -> list[str]:
    return [engine.render_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def alone(engine: OnnxEngine, prompts: list[str]) -> list[str]:
    """Each stream's greedy text when it runs by itself."""
    async def each():
        return [(await collect(engine.generate(f"alone-{i}", p, STREAM))).text for i, p in enumerate(prompts[1:])]
    return asyncio.run(each())


async def three_streams_and(engine: OnnxEngine, prompts: list[str], odd_one: SamplingParams):
    """Three greedy streams and a fourth request with `odd_one`, all in the batch together."""
    streams = [collect(engine.generate(f"stream-{i}", p, STREAM)) for i, p in enumerate(prompts[1:])]
    odd = collect(engine.generate("odd-one", prompts[0], odd_one))
    results = await asyncio.wait_for(asyncio.gather(odd, *streams, return_exceptions=True), DEADLINE_SECONDS)
    return results[0], results[1:]


def fail_after(engine: OnnxEngine, request_id: str, tokens: int, waiting: list[int] | None = None):
    """A fault hook failing `request_id` once it has `tokens` tokens (0: at the end of its prefill); it notes how
    many requests were still waiting for their prefill at that moment."""
    def hook(sequence) -> None:
        if sequence.request_id == request_id and len(sequence.generated) >= tokens:
            if waiting is not None:
                waiting.append(len(engine.batcher.waiting))
            raise RuntimeError("injected by the test")
    return hook


def test_a_sequence_that_fails_beside_three_streams_ends_alone(engine, prompts, alone):
    engine.batcher.fault_hook = fail_after(engine, "odd-one", 5)
    odd, streams = asyncio.run(three_streams_and(engine, prompts, SamplingParams(max_tokens=40, temperature=0)))
    assert isinstance(odd, EngineError) and odd.status == 500
    assert [s.text for s in streams] == alone
    assert all(s.finish_reason is not None for s in streams)


def test_a_tiny_temperature_samples_greedily_beside_three_streams(engine, prompts, alone):
    odd, streams = asyncio.run(three_streams_and(engine, prompts, SamplingParams(max_tokens=40, temperature=1e-38)))
    greedy = asyncio.run(collect(engine.generate("greedy", prompts[0], STREAM)))
    assert odd.text == greedy.text and "Paris" in odd.text
    assert [s.text for s in streams] == alone


def test_when_the_first_of_two_admitted_requests_fails_in_prefill_the_second_completes(engine, prompts):
    still_waiting: list[int] = []
    engine.batcher.fault_hook = fail_after(engine, "first", 0, still_waiting)

    async def scenario():
        first = asyncio.ensure_future(collect(engine.generate("first", prompts[0], STREAM)))
        second = asyncio.ensure_future(collect(engine.generate("second", prompts[1], STREAM)))
        # Holding the batcher's lock while both submit makes them queue together, the second behind the first.
        with engine.batcher._condition:
            await asyncio.sleep(0.2)
        return await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), DEADLINE_SECONDS)

    first, second = asyncio.run(scenario())
    assert still_waiting == [1]  # the second was queued behind the first, not prefilled yet, when it failed
    assert isinstance(first, EngineError) and first.status == 500
    assert second.finish_reason is not None and second.completion_tokens > 0
    assert wait_for(lambda: engine.stats().running == 0, timeout=10)  # its slot is freed too
