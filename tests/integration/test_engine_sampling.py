"""Sampling, logprobs and slot compaction in the continuous batcher with the real ONNX fp32 model (no Ray).

These fail on the batcher before this change: it had no vLLM extensions (`ignore_eos`, `min_tokens`), no prompt
logprobs and no max_tokens 0, logprob tokens were vocabulary strings ("Ġthe"), and a departure moved every later
sequence's cache."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from serving.engines.base import SamplingParams
from serving.engines.onnx_engine import OnnxEngine, OnnxEngineConfig, collect

QUESTIONS = ["What is the capital of France?", "Write a haiku about autumn leaves.", "Why is the sky blue?",
             "How do I boil an egg?"]


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


def test_a_seeded_request_gives_the_same_tokens_alone_and_beside_other_sequences(engine, prompts):
    seeded = SamplingParams(max_tokens=32, temperature=1.0, top_p=0.95, seed=-42)

    async def beside_others():
        others = [collect(engine.generate(f"other-{i}", p, SamplingParams(max_tokens=40, temperature=1.0)))
                  for i, p in enumerate(prompts[2:])]
        results = await asyncio.gather(collect(engine.generate("seeded-crowd", prompts[1], seeded)), *others)
        return results[0]

    alone = run(collect(engine.generate("seeded-alone", prompts[1], seeded)))
    assert run(beside_others()).token_ids == alone.token_ids
    other_seed = SamplingParams(max_tokens=32, temperature=1.0, top_p=0.95, seed=-43)
    assert run(collect(engine.generate("seeded-other", prompts[1], other_seed))).token_ids != alone.token_ids


def test_logprob_tokens_are_text_that_spells_the_output(engine):
    prompt = engine.render_chat([{"role": "user", "content": "Say hello in Japanese and Greek, with an emoji."}])
    output = run(collect(engine.generate("texts", prompt, SamplingParams(max_tokens=40, temperature=0, logprobs=3))))
    # An end token adds nothing to the text; its entry names it (as vLLM's does).
    written = output.logprobs[:-1] if output.finish_reason == "stop" else output.logprobs
    assert "".join(item.token for item in written) == output.text
    joined = b"".join(item.token_bytes for item in written)
    # The bytes are the output's UTF-8, and those of a last character that max_tokens cut, if any.
    assert joined.startswith(output.text.encode()) and len(joined) - len(output.text.encode()) < 4
    assert not any("Ġ" in item.token or "Ċ" in item.token for item in output.logprobs)
    assert all(len(item.top) == 3 and item.top[0][1] >= item.top[2][1] for item in output.logprobs)


def test_max_tokens_zero_scores_the_prompt_without_generating(engine):
    prompt = "The capital of France is Paris"
    output = run(collect(engine.generate("score", prompt, SamplingParams(max_tokens=0, prompt_logprobs=2))))
    assert (output.finish_reason, output.completion_tokens, output.token_ids, output.text) == ("length", 0, [], "")
    entries = output.prompt_logprobs
    assert "".join(e.token for e in entries) == prompt and entries[0].logprob is None
    assert all(e.logprob <= 0 and len(e.top) == 2 for e in entries[1:])
    paris = entries[-1].logprob
    other = run(collect(engine.generate("score-b", "The capital of France is Tokyo",
                                        SamplingParams(max_tokens=0, prompt_logprobs=0))))
    assert paris > other.prompt_logprobs[-1].logprob  # the model knows its capitals
    bare = run(collect(engine.generate("score-c", prompt, SamplingParams(max_tokens=0))))
    assert (bare.finish_reason, bare.completion_tokens, bare.prompt_logprobs) == ("length", 0, None)


def test_ignore_eos_runs_to_max_tokens_and_min_tokens_holds_the_end_back(engine, prompts):
    natural = run(collect(engine.generate("natural", prompts[0], SamplingParams(max_tokens=120, temperature=0))))
    assert natural.finish_reason == "stop" and natural.completion_tokens < 60
    longer = natural.completion_tokens + 20
    ignoring = run(collect(engine.generate("ignore-eos", prompts[0], SamplingParams(
        max_tokens=longer, temperature=0, ignore_eos=True))))
    assert (ignoring.finish_reason, ignoring.completion_tokens) == ("length", longer)
    held = run(collect(engine.generate("min-tokens", prompts[0], SamplingParams(
        max_tokens=120, temperature=0, min_tokens=natural.completion_tokens + 5))))
    assert held.completion_tokens >= natural.completion_tokens + 5
    assert held.text.startswith(natural.text)


def test_a_departure_moves_one_sequence_and_the_others_stay_correct(engine, prompts):
    """Four sequences leave one after another (slot 0 first): each departure moves at most the last sequence."""
    requests = [(p, SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
                for p, n in zip(prompts, [6, 12, 18, 24], strict=True)]

    async def alone():
        return [(await collect(engine.generate(f"solo-{i}", p, s))).text for i, (p, s) in enumerate(requests)]

    async def together():
        return await asyncio.gather(*(collect(engine.generate(f"pack-{i}", p, s)) for i, (p, s) in enumerate(requests)))

    expected = run(alone())
    model, moves = engine.batcher.model, []
    original = model.move_slot

    def counted(source: int, target: int, length: int) -> None:
        moves.append((source, target))
        original(source, target, length)

    model.move_slot = counted
    try:
        outputs = run(together())
    finally:
        model.move_slot = original
    assert [o.text for o in outputs] == expected
    assert len(moves) <= len(requests) - 1 and all(source > target for source, target in moves)
