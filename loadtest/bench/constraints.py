"""`make bench` section: what constrained decoding costs in the ONNX engine (onnx-int4).

At 1 and 8 streams, greedy requests of exactly `tokens` tokens run free and under a JSON schema that cannot end
sooner (an array of at least 50 strings), interleaved and repeated: tokens/s constrained ÷ free. Then the masks
alone: the constrained outputs are replayed through fresh matchers, the streams' masks computed together per step
as the engine's sampler does (TokenGrammars.allowed_tokens_masks) and applied to logits rows, and that time is set
against the decode step (the free run's time per step).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import numpy as np

from loadtest.bench.engines import PROMPT, onnx_engine, run

VARIANT = "onnx-int4"
LONG_ARRAY = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"},
                                                         "minItems": 50}},
              "required": ["items"], "additionalProperties": False}


def timed_streams(engine, streams: int, tokens: int, constraint) -> tuple[float, list[list[int]]]:
    """Seconds for `streams` greedy requests of `tokens` tokens started together, and their tokens."""
    from serving.engines.base import SamplingParams

    prompt_ids = engine.encode(engine.render_chat(PROMPT))
    params = SamplingParams(max_tokens=tokens, temperature=0, constraint=constraint)

    async def one(index: int) -> list[int]:
        generated: list[int] = []
        async for output in engine.generate(f"constraints-{index}-{time.monotonic_ns()}", prompt_ids, params):
            generated += output.token_ids
        return generated

    async def together():
        return await asyncio.gather(*(one(i) for i in range(streams)))

    started = time.perf_counter()
    outputs = run(together())
    return time.perf_counter() - started, outputs


def mask_step_seconds(grammars, constraint, outputs: list[list[int]]) -> float:
    """Median time of one step's masks for all the streams at once, replaying `outputs` token by token."""
    from serving.engines.grammar import mask_logits

    matchers = [grammars.matcher(constraint) for _ in outputs]
    logits = np.zeros((len(outputs), grammars.vocab_size), np.float32)
    times = []
    for step in range(min(len(tokens) for tokens in outputs)):
        started = time.perf_counter()
        mask_logits(logits, grammars.allowed_tokens_masks(matchers))
        times.append(time.perf_counter() - started)
        for matcher, tokens in zip(matchers, outputs, strict=True):
            matcher.accept(tokens[step])
    return statistics.median(times)


def bench_constraints(model_dir: Path, levels: list[int], repeats: int, tokens: int) -> list[dict]:
    from serving.engines.grammar import json_schema_constraint

    constraint = json_schema_constraint(LONG_ARRAY, strict=True)
    engine = onnx_engine(model_dir / VARIANT, max(levels))
    rows = []
    try:
        timed_streams(engine, 1, 4, constraint)  # warm-up: first compile, first forward passes
        for streams in levels:
            free, constrained, outputs = [], [], []
            for _ in range(repeats):
                free.append(timed_streams(engine, streams, tokens, None)[0])
                seconds, outputs = timed_streams(engine, streams, tokens, constraint)
                constrained.append(seconds)
            step = statistics.median(free) / tokens
            masks = mask_step_seconds(engine.batcher.grammars, constraint, outputs)
            rows.append({"variant": VARIANT, "streams": streams, "tokens": tokens, "repeats": repeats,
                         "free_tokens_per_s": streams * tokens / statistics.median(free),
                         "constrained_tokens_per_s": streams * tokens / statistics.median(constrained),
                         "constrained_over_free": statistics.median(free) / statistics.median(constrained),
                         "decode_step_ms": step * 1e3, "mask_step_ms": masks * 1e3,
                         "mask_fraction_of_step": masks / step})
    finally:
        engine.shutdown()
    return rows


def constraints_section(rows: list[dict]) -> list[str]:
    """BENCHMARKS.md lines for this section."""
    lines = ["## 7. Constrained decoding (JSON schema) in the ONNX engine", "",
             "| variant | streams | tokens/s free | tokens/s constrained | constrained ÷ free | decode step ms | "
             "mask ms per step | mask ÷ step |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['streams']} | {row['free_tokens_per_s']:.1f} | "
                     f"{row['constrained_tokens_per_s']:.1f} | {row['constrained_over_free']:.2f} | "
                     f"{row['decode_step_ms']:.1f} | {row['mask_step_ms']:.2f} | {row['mask_fraction_of_step']:.1%} |")
    if rows:
        lines += ["", f"Greedy requests of {rows[0]['tokens']} tokens under a schema that cannot end sooner (an "
                  f"array of at least 50 strings), free and constrained interleaved, {rows[0]['repeats']} repeats, "
                  "medians. The mask time is the sampler's work for all streams of a step (llguidance computing "
                  "their masks together, then the logits masked), replayed on the constrained outputs; the decode "
                  "step is the free run's time per token. Target: the mask at most 10 % of the step."]
    return lines
