"""Batch-1 decode speed of an ONNX variant through the serving engine (the same code path a replica runs)."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

from serving.engines.base import SamplingParams
from serving.engines.onnx_engine import OnnxEngine, OnnxEngineConfig

PROMPT = [{"role": "user", "content": "Tell me about the history of the printing press."}]
DECODE_TOKENS = 96


async def _one_run(engine: OnnxEngine, request_id: str) -> float:
    """Tokens per second after the first token (the prompt's prefill is excluded)."""
    params = SamplingParams(max_tokens=DECODE_TOKENS, temperature=0, ignore_eos=True)
    first_at, tokens = None, 0
    async for output in engine.generate(request_id, engine.render_chat(PROMPT), params):
        if first_at is None:
            first_at, tokens = time.perf_counter(), output.completion_tokens
            continue
        last_at, last_tokens = time.perf_counter(), output.completion_tokens
    return (last_tokens - tokens) / (last_at - first_at)


def decode_tokens_per_second(onnx_dir: Path, runs: int = 3, threads: int = 1) -> float:
    """Median over `runs` greedy generations of DECODE_TOKENS tokens, after one warm-up run."""
    engine = OnnxEngine(OnnxEngineConfig(onnx_dir, max_batch_size=1, context_length=512, threads=threads))

    async def measure() -> list[float]:
        await _one_run(engine, "warm-up")
        return [await _one_run(engine, f"run-{index}") for index in range(runs)]

    try:
        return round(statistics.median(asyncio.run(measure())), 1)
    finally:
        engine.shutdown()
