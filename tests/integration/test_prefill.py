"""Chunked prefill with the real onnx-int4 model (no Ray, no HTTP): a prompt prefilled in chunks gives the same
greedy text and prompt logprobs as one pass, and streams keep decoding while a long prompt is prefilled.

Before chunked prefill the batcher ran each prompt in one pass while every running stream waited (the last test
fails there: the streams wait out the long prompt's whole prefill)."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from quantserve.manifest import read_manifest
from serving.engines.base import SamplingParams
from serving.engines.onnx_engine import OnnxEngine, OnnxEngineConfig, collect
from tests.helpers import wait_for_async

GREEDY = SamplingParams(max_tokens=24, temperature=0)
FACTS = " ".join(f"Fact {i}: the lighthouse keeper counted {i * 7} gulls on day {i}." for i in range(30))


def engine_with(models: Path, **settings) -> OnnxEngine:
    model_dir = models / "smollm2-135m"
    folder = model_dir / "onnx-int4" / read_manifest(model_dir).variants["onnx-int4"].serve_paths["onnx"]
    return OnnxEngine(OnnxEngineConfig(folder, max_batch_size=4, max_queue=8,
                                       context_length=1024, prefix_cache_mib=0, **settings))


@pytest.fixture(scope="module")
def whole(built_models: Path):
    engine = engine_with(built_models, prefill_chunk_tokens=0)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def chunked(built_models: Path):
    engine = engine_with(built_models, prefill_chunk_tokens=16)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def prompts(whole: OnnxEngine) -> list[str]:
    questions = ["What did the keeper count on day 12?", "Write a short poem about the sea.", "Sum up the facts."]
    return [whole.render_chat([{"role": "system", "content": FACTS[: 200 * (i + 1)]}, {"role": "user", "content": q}])
            for i, q in enumerate(questions)]


def texts(engine: OnnxEngine, prompts: list[str], tag: str) -> list[str]:
    async def one_by_one():
        return [(await collect(engine.generate(f"{tag}-{i}", p, GREEDY))).text for i, p in enumerate(prompts)]
    return asyncio.run(one_by_one())


def test_a_prompt_prefilled_in_chunks_gives_the_same_greedy_text_as_one_pass(whole, chunked, prompts):
    assert all(len(whole.encode(p)) > 4 * 16 for p in prompts)  # several chunks each
    expected = texts(whole, prompts, "whole")
    assert all(expected)
    assert texts(chunked, prompts, "chunked") == expected


def test_prompt_logprobs_gathered_chunk_by_chunk_match_one_pass(whole, chunked, prompts):
    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=2)
    one, pieces = (asyncio.run(collect(e.generate(f"scores-{n}", prompts[0], params)))
                   for n, e in (("whole", whole), ("chunked", chunked)))
    assert len(one.prompt_logprobs) == len(pieces.prompt_logprobs) == one.prompt_tokens
    assert [e.token for e in pieces.prompt_logprobs] == [e.token for e in one.prompt_logprobs]
    assert pieces.prompt_logprobs[0].logprob is None
    assert all(abs(a.logprob - b.logprob) < 1e-3 for a, b in zip(one.prompt_logprobs[1:], pieces.prompt_logprobs[1:],
                                                                   strict=True))
    assert one.text == pieces.text


def longest_stream_wait_during_prefill(engine: OnnxEngine, short: str, long: str) -> tuple[float, float]:
    """Two streams decode; a long prompt arrives. The longest wait between stream tokens while its prefill ran,
    and its prefill seconds."""
    arrivals: list[float] = []

    async def stream(index: int) -> None:
        async for _ in engine.generate(f"stream-{index}-{time.monotonic_ns()}", short,
                                       SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)):
            arrivals.append(time.monotonic())

    async def scenario():
        streams = [asyncio.ensure_future(stream(i)) for i in range(2)]
        assert await wait_for_async(lambda: len(arrivals) >= 4, 60), "the streams never started"
        submitted = time.monotonic()
        first = None
        async for output in engine.generate(f"long-{time.monotonic_ns()}", long, SamplingParams(max_tokens=1)):
            first = first or output
        began = submitted + first.queue_seconds
        ended = began + first.prefill_seconds
        # The long prompt's first token can reach us before the streams' tokens of the same step: wait for a stream
        # token after its prefill, or the gap that spans the prefill is never seen.
        assert await wait_for_async(lambda: arrivals[-1] > ended, 30), "the streams never resumed"
        for task in streams:
            task.cancel()
        waits = [b - a for a, b in itertools.pairwise(arrivals) if b > began and a < ended]
        return max(waits), first.prefill_seconds

    return asyncio.run(scenario())


def test_streams_keep_decoding_while_a_long_prompt_is_prefilled(chunked, whole, prompts):
    short, long = prompts[1], prompts[2]
    chunked_wait, chunked_prefill = longest_stream_wait_during_prefill(chunked, short, long)
    whole_wait, whole_prefill = longest_stream_wait_during_prefill(whole, short, long)
    assert whole_wait > whole_prefill / 2  # one pass: the streams wait for the whole prompt
    assert chunked_wait < chunked_prefill / 4, (chunked_wait, chunked_prefill)  # a chunk at a time
