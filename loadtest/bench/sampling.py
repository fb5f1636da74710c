"""What sampling at the OpenAI default costs the ONNX engine (issue 16): tokens/s of streams at temperature 1
(top_p 1) and at temperature 0.7 with top_p 0.9 against greedy streams, on the same engine and prompt, every
exactly the same length (`ignore_eos`), interleaved; and the sampler alone, timed on the model's own logits for a
batch of that size, beside the decode step it follows."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from loadtest.bench.engines import PROMPT, onnx_engine, stream_figures, variant_folder
from loadtest.bench.markdown import figure, table
from serving.engines.base import SamplingParams

SAMPLING_VARIANT = "onnx-int4"
GREEDY = "greedy"
MODES = ((GREEDY, {"temperature": 0.0}), ("temperature 1", {"temperature": 1.0, "top_p": 1.0}),
         ("temperature 0.7, top_p 0.9", {"temperature": 0.7, "top_p": 0.9}))
SAMPLER_CALLS = 50


def bench_sampling(model_dir: Path, levels: list[int], repeats: int, tokens: int) -> list[dict]:
    """Per level and setting: tokens/s, and each step's time split into ONNX Runtime's forward pass (the engine's
    busy seconds) and the rest (sampling, detokenizing, scheduling), medians over the repeats."""
    folder = variant_folder(model_dir, SAMPLING_VARIANT)
    engine = onnx_engine(folder, max(levels))
    params = {mode: SamplingParams(max_tokens=tokens, ignore_eos=True, **settings) for mode, settings in MODES}
    for mode_params in params.values():  # first-run allocations and the softmax session out of the measurement
        stream_figures(engine, max(levels), tokens, mode_params)
    runs: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for _ in range(repeats):
        for streams in levels:
            for mode, mode_params in params.items():
                busy = engine.stats().busy_seconds_total
                speed = stream_figures(engine, streams, tokens, mode_params)["tokens_per_s"]
                forward = (engine.stats().busy_seconds_total - busy) / tokens
                runs[(mode, streams)].append({"speed": speed, "forward_ms": 1000 * forward,
                                              "outside_ms": 1000 * (streams / speed - forward)})
    logits = last_logits(engine, folder)
    eos = tuple(engine.batcher.model.shape.eos_token_ids)
    engine.shutdown()
    rows = []
    for streams in levels:
        greedy = statistics.median(r["speed"] for r in runs[(GREEDY, streams)])
        forwards = [r["forward_ms"] for mode, _ in MODES for r in runs[(mode, streams)]]
        for mode, settings in MODES:
            speed = statistics.median(r["speed"] for r in runs[(mode, streams)])
            rows.append({"variant": SAMPLING_VARIANT, "streams": streams, "mode": mode, "repeats": repeats,
                         "tokens_per_s": speed, "x_greedy": speed / greedy, "step_ms": 1000 * streams / speed,
                         "forward_ms": statistics.median(r["forward_ms"] for r in runs[(mode, streams)]),
                         "outside_ms": statistics.median(r["outside_ms"] for r in runs[(mode, streams)]),
                         "forward_spread": (max(forwards) - min(forwards)) / statistics.median(forwards),
                         "sampler_ms": sampler_milliseconds(logits, streams, settings, eos)})
    return rows


def last_logits(engine, folder: Path) -> np.ndarray:
    """The model's logits [vocab] after the bench prompt (what the sampler sees at a real first step)."""
    from serving.engines.onnx_model import SlotKVModel

    model = SlotKVModel(folder, slots=1, context_length=512)
    prompt = np.array([engine.encode(engine.render_chat(PROMPT))], np.int64)
    return model.forward(0, prompt, [prompt.shape[1]])[0, -1].astype(np.float32)


def sampler_milliseconds(logits: np.ndarray, streams: int, settings: dict, eos: tuple[int, ...]) -> float:
    """Median time of one BatchSampler.sample call over `streams` rows of these logits."""
    from serving.engines.sampling import BatchSampler, SequenceSampling

    batch = np.tile(logits, (streams, 1))
    params = SamplingParams(max_tokens=1, **settings)
    states = [SequenceSampling.start(params, [], eos) for _ in range(streams)]
    sampler = BatchSampler()
    sampler.sample(batch, states)  # first call builds the softmax session
    times = []
    for _ in range(SAMPLER_CALLS):
        started = time.perf_counter()
        sampler.sample(batch, states)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


# --- BENCHMARKS.md ------------------------------------------------------------------------------------------------

SAMPLING_TARGET = 0.95  # issue 16: tokens/s at temperature 1 >= 0.95x greedy, at 1 and at 8 streams
DEFAULT_TEMPERATURE = MODES[1][0]
NOISE = 0.03  # ratios of wall-clock runs on this shared machine move by about this much between repeats


def sampling_section(rows: list[dict]) -> list[str]:
    lines = [f"## 12. Sampling at the OpenAI default temperature ({rows[0]['variant']})", "",
             "The same engine and prompt, streams started together, every stream exactly the same number of tokens "
             f"(`ignore_eos`), the three settings interleaved in each of {rows[0].get('repeats', 3)} repeats, "
             "medians. A step (streams ÷ tokens/s) is ONNX Runtime's forward pass (the engine's busy time) and "
             "the rest: sampling, detokenizing, scheduling. *sampler ms* is one BatchSampler call for the whole "
             "batch, timed alone on the model's logits.", ""]
    lines += table(["streams", "sampling", "x greedy", "tok/s", "step ms", "forward ms", "rest ms", "sampler ms"],
                   [[str(r["streams"]), r["mode"], figure(r["x_greedy"], 2), figure(r["tokens_per_s"]),
                     figure(r["step_ms"], 2), figure(r.get("forward_ms"), 2), figure(r.get("outside_ms"), 2),
                     figure(r["sampler_ms"], 2)] for r in rows])
    return [*lines, "", sampling_paragraph(rows)]


def sampling_paragraph(rows: list[dict]) -> str:
    greedy = {r["streams"]: r for r in rows if r["mode"] == GREEDY}
    parts, unexplained = [], []
    for r in (r for r in rows if r["mode"] == DEFAULT_TEMPERATURE):
        base = greedy[r["streams"]]
        expected = base["step_ms"] / (base["step_ms"] + r["outside_ms"] - base["outside_ms"])
        verdict = "meets" if r["x_greedy"] >= SAMPLING_TARGET else "misses"
        level = f"at {r['streams']} stream{'s' if r['streams'] > 1 else ''}"
        parts.append(f"{level} temperature 1 makes "
                     f"{r['x_greedy']:.2f}x greedy's tokens/s ({verdict} the target, ≥ {SAMPLING_TARGET:g}x); "
                     f"outside the forward pass its step takes {r['outside_ms']:.2f} ms against greedy's "
                     f"{base['outside_ms']:.2f} ms (the sampler alone {r['sampler_ms']:.2f} ms), which alone gives "
                     f"{expected:.2f}x")
        if abs(expected - r["x_greedy"]) > NOISE:
            unexplained.append(f"{level} the forward pass took {r['forward_ms']:.1f} ms against "
                               f"greedy's {base['forward_ms']:.1f} ms, though it does the same work whatever the "
                               f"sampling (it varied by {r['forward_spread']:.0%} between runs at that level)")
    text = ("Issue 16's target: " + "; ".join(parts) + ". The sampler draws without sorting the vocabulary: one "
            "softmax over the batch in ONNX Runtime, then a two-level exponential race (block totals, then inside "
            "one block).")
    if not unexplained:
        return text + " The measured ratios are within the noise of what the extra time predicts."
    return text + " The rest of the difference is not sampling: " + "; ".join(unexplained) + "."
