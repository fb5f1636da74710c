"""The prefix cache with the real onnx-int4 model (no Ray, no HTTP): greedy texts identical with the cache on and
off, through hits, misses and evictions; a hit reported with the tokens it reused, and a first token much sooner.

Before the prefix cache every prompt was computed whole (no output reported `cached_tokens`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from quantserve.manifest import read_manifest
from serving.engines.base import SamplingParams
from serving.engines.onnx_engine import OnnxEngine, OnnxEngineConfig, collect

GREEDY = SamplingParams(max_tokens=20, temperature=0)
SYSTEMS = [" ".join(f"Rule {i}: a {kind} keeper logs {i * 3} ships at dawn." for i in range(12))
           for kind in ("lighthouse", "harbour", "canal")]
QUESTIONS = ["How many ships at rule 5?", "Name the keeper.", "What happens at dawn?"]


def engine_with(models: Path, cache_mib: int) -> OnnxEngine:
    model_dir = models / "smollm2-135m"
    folder = model_dir / "onnx-int4" / read_manifest(model_dir).variants["onnx-int4"].serve_paths["onnx"]
    return OnnxEngine(OnnxEngineConfig(folder, max_batch_size=4, max_queue=8,
                                       context_length=1024, prefix_cache_mib=cache_mib))


@pytest.fixture(scope="module")
def engines(built_models: Path):
    # 24 MiB holds about 540 positions: two or three of these prompts, so the later ones evict earlier ones.
    made = {"off": engine_with(built_models, 0), "on": engine_with(built_models, 24)}
    yield made
    for engine in made.values():
        engine.shutdown()


def conversation(engine: OnnxEngine) -> list[str]:
    """Each system prompt with two questions, then the first system prompt again (evicted by then)."""
    turns = [(s, q) for s in SYSTEMS for q in QUESTIONS[:2]] + [(SYSTEMS[0], QUESTIONS[2])]
    return [engine.render_chat([{"role": "system", "content": s}, {"role": "user", "content": q}]) for s, q in turns]


def run_all(engine: OnnxEngine, prompts: list[str], tag: str):
    async def one_by_one():
        return [await collect(engine.generate(f"{tag}-{i}", p, GREEDY)) for i, p in enumerate(prompts)]
    return asyncio.run(one_by_one())


def test_greedy_texts_are_the_same_with_the_cache_on_and_off_through_hits_and_evictions(engines):
    prompts = conversation(engines["off"])
    cache = engines["on"].batcher.prompts.prefix_cache
    assert len(engines["off"].encode(prompts[0])) * 2 < cache.capacity_tokens < len(engines["off"].encode(
        prompts[0])) * 4  # the test's premise: a few prompts fit, not all
    off, on = run_all(engines["off"], prompts, "off"), run_all(engines["on"], prompts, "on")
    assert [o.text for o in on] == [o.text for o in off]
    assert all(o.cached_tokens is None for o in off)
    reused = [o.cached_tokens for o in on]
    assert reused[0] == 0 and all(reused[i] > 100 for i in (1, 3, 5))  # the second question of each system prompt
    assert reused[6] < 100  # the first system prompt came back after it was evicted
    assert cache.held_tokens <= cache.capacity_tokens


def test_a_hit_reaches_its_first_token_much_sooner_than_the_miss_before_it(engines):
    engine = engines["on"]
    system = " ".join(f"Entry {i}: the archive holds {i * 11} maps of the northern coast." for i in range(20))
    first, second = (engine.render_chat([{"role": "system", "content": system}, {"role": "user", "content": q}])
                     for q in ("List three maps.", "Which coast?"))
    single = SamplingParams(max_tokens=1, temperature=0)
    miss = asyncio.run(collect(engine.generate("miss", first, single)))
    hit = asyncio.run(collect(engine.generate("hit", second, single)))
    assert miss.cached_tokens == 0 and hit.cached_tokens > 0.9 * hit.prompt_tokens
    assert hit.prefill_seconds < miss.prefill_seconds / 3
