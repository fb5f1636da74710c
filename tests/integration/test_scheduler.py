"""The continuous batcher with the real ONNX fp32 model of the embedded SmolLM2 (no Ray, no HTTP)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from serving.engines.base import EngineError, SamplingParams
from serving.engines.onnx_engine import OnnxEngine, OnnxEngineConfig, collect
from tests.helpers import wait_for_async

QUESTIONS = ["What is the capital of France?", "Write a haiku about autumn leaves.", "Why is the sky blue?",
             "How do I boil an egg?"]
GREEDY = SamplingParams(max_tokens=20, temperature=0)


@pytest.fixture(scope="module")
def engine(built_models: Path):
    engine = OnnxEngine(OnnxEngineConfig(built_models / "smollm2-135m" / "onnx-fp32", max_batch_size=4,
                                         max_queue=8, context_length=512))
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def prompts(engine: OnnxEngine) -> list[str]:
    return [engine.render_chat([{"role": "user", "content": q}]) for q in QUESTIONS]


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_requests_give_the_same_greedy_text_as_one_at_a_time(engine, prompts):
    async def one_at_a_time():
        return [(await collect(engine.generate(f"serial-{i}", p, GREEDY))).text for i, p in enumerate(prompts)]

    async def together():
        outputs = await asyncio.gather(*(collect(engine.generate(f"batch-{i}", p, GREEDY))
                                         for i, p in enumerate(prompts)))
        return [o.text for o in outputs]

    serial = run(one_at_a_time())
    assert "Paris" in serial[0]
    assert run(together()) == serial


def test_a_request_arriving_mid_batch_joins_the_running_batch(engine, prompts):
    async def scenario():
        early = asyncio.create_task(collect(engine.generate("early", prompts[1], SamplingParams(max_tokens=60,
                                                                                               temperature=0))))
        assert await wait_for_async(lambda: engine.stats().running > 0, 30), "the early request never ran"
        late = await collect(engine.generate("late", prompts[0], GREEDY))
        early_done = early.done()
        await early
        return late, early_done

    late, early_done_when_late_finished = run(scenario())
    assert "Paris" in late.text
    # The late request did not wait for the 60-token request to drain: it finished first.
    assert not early_done_when_late_finished
    assert late.queue_seconds < 1.0


def test_a_seed_makes_sampling_reproducible_and_different_seeds_differ(engine, prompts):
    async def sample(seed: int, request_id: str) -> str:
        params = SamplingParams(max_tokens=24, temperature=1.0, seed=seed)
        return (await collect(engine.generate(request_id, prompts[1], params))).text

    first, again = run(sample(7, "seed-a")), run(sample(7, "seed-b"))
    others = {run(sample(seed, f"seed-{seed}")) for seed in (8, 9, 10)}
    assert first == again
    assert others - {first}


def test_stop_strings_end_the_text_before_them(engine, prompts):
    output = run(collect(engine.generate("stop", prompts[0], SamplingParams(max_tokens=20, temperature=0,
                                                                              stop=("Paris",)))))
    assert output.finish_reason == "stop"
    assert "Paris" not in output.text
    assert output.text.startswith("The capital of France is")


def test_max_tokens_ends_with_length(engine, prompts):
    output = run(collect(engine.generate("length", prompts[1], SamplingParams(max_tokens=5, temperature=0))))
    assert (output.finish_reason, output.completion_tokens, len(output.token_ids)) == ("length", 5, 5)


def test_closing_the_stream_aborts_the_request_and_frees_its_slot(engine, prompts):
    async def scenario():
        stream = engine.generate("abandoned", prompts[3], SamplingParams(max_tokens=400, temperature=0))
        received = 0
        async for _ in stream:
            received += 1
            if received == 3:
                break
        await stream.aclose()
        await wait_for_async(lambda: engine.stats().running == 0, 4)
        return received, engine.stats()

    received, stats = run(scenario())
    assert received == 3
    assert stats.running == 0 and stats.waiting == 0


def test_a_prompt_longer_than_the_context_is_refused_with_the_counts(engine):
    with pytest.raises(EngineError) as refused:
        run(collect(engine.generate("long", "word " * 600, GREEDY)))
    assert refused.value.status == 400
    assert "512" in refused.value.message and refused.value.code == "context_length_exceeded"


def test_a_full_queue_answers_503(built_models: Path, prompts):
    small = OnnxEngine(OnnxEngineConfig(built_models / "smollm2-135m" / "onnx-fp32", max_batch_size=1,
                                        max_queue=1, context_length=512))

    async def scenario():
        long = SamplingParams(max_tokens=200, temperature=0)
        running = asyncio.create_task(collect(small.generate("running", prompts[1], long)))
        assert await wait_for_async(lambda: small.stats().running > 0, 30), "the first request never ran"
        waiting = small.generate("waiting", prompts[2], long)
        waiting_task = asyncio.create_task(collect(waiting))
        assert await wait_for_async(lambda: small.stats().waiting > 0, 30), "the second request was never queued"
        with pytest.raises(EngineError) as refused:
            await collect(small.generate("refused", prompts[0], GREEDY))
        running.cancel()
        waiting_task.cancel()
        await asyncio.gather(running, waiting_task, return_exceptions=True)
        return refused.value

    try:
        refused = run(scenario())
    finally:
        small.shutdown()
    assert refused.status == 503 and refused.code == "overloaded"


def test_a_caller_whose_event_loop_is_gone_does_not_stop_the_engine(engine, prompts):
    async def read_one_and_leave():
        stream = engine.generate("left-behind", prompts[1], SamplingParams(max_tokens=40, temperature=0))
        return await anext(stream)  # the stream is neither finished nor closed when this loop ends

    first = run(read_one_and_leave())
    assert first.completion_tokens >= 1
    later = run(collect(engine.generate("after", prompts[0], GREEDY)))
    assert "Paris" in later.text
