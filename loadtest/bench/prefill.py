"""Prompt-side engine benchmarks (issue 16): prefill tokens/s per variant (logits for every position, as before,
against the last position only; one intra-op thread against two), which thread setting serves faster, streams'
inter-token latency while a long prompt arrives (chunked prefill on and off), and the first token of a request
whose prompt starts like an earlier one (prefix cache on and off).

This machine is shared: CPU seconds of the process are recorded beside wall seconds, since a busy neighbour
stretches wall time but not the work done.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections import defaultdict
from contextlib import aclosing
from pathlib import Path

import numpy as np

from loadtest.bench.engines import (
    CHAT_VARIANTS,
    operator_times,
    profile_events,
    profiled_model,
    run,
    stream_figures,
    variant_folder,
)
from quantserve.manifest import read_manifest

LONG_PROMPT_VARIANT = "onnx-int4"
FILLER = "Entry {i}: the harbour master wrote that {n} ships came in before noon and {m} left after dark."


def filler_ids(engine, tokens: int, seed: int) -> list[int]:
    """`tokens` token ids of plain text, different for each seed (so that no prefix cache knows them)."""
    text = " ".join(FILLER.format(i=i + seed * 1000, n=(i * 7 + seed) % 97, m=(i * 5 + seed) % 89)
                    for i in range(tokens // 8 + 8))
    ids = engine.encode(text)
    if len(ids) < tokens:
        raise ValueError(f"the filler text has {len(ids)} tokens, fewer than {tokens}")
    return ids[:tokens]


def engine_for(folder: Path, **settings):
    from serving.engines.onnx_engine import OnnxEngine, OnnxEngineConfig

    return OnnxEngine(OnnxEngineConfig(folder, **{"max_queue": 64, "context_length": 512, **settings}))


def variant_folders(model_dir: Path) -> dict[str, Path]:
    built = read_manifest(model_dir).variants
    return {name: variant_folder(model_dir, name) for name in CHAT_VARIANTS if name in built}


# --- prefill tokens/s -------------------------------------------------------------------------------------------

PREFILL_CASES = (("every position", 1), ("last position", 1), ("every position", 2), ("last position", 2))


def timed_prefill(model, prompt: np.ndarray, every_position: bool) -> tuple[float, float]:
    """Wall and CPU seconds of one prefill of `prompt` [1, n] into slot 0."""
    rows = np.arange(prompt.shape[1]) if every_position else None
    wall, cpu = time.perf_counter(), time.process_time()
    model.forward(0, prompt, [prompt.shape[1]], rows)
    return time.perf_counter() - wall, time.process_time() - cpu


def bench_prefill(model_dir: Path, repeats: int, prompt_tokens: int) -> list[dict]:
    """Per variant, a `prompt_tokens`-token prefill in each case of PREFILL_CASES (the four measured in turn, each
    repeat), straight on the model: tokens/s by wall time and by CPU time."""
    from serving.engines.onnx_model import SlotKVModel

    rows = []
    prompt = np.random.default_rng(0).integers(100, 40_000, size=(1, prompt_tokens))
    for name, folder in variant_folders(model_dir).items():
        models = {threads: SlotKVModel(folder, 1, prompt_tokens + 8, threads) for threads in (1, 2)}
        for model in models.values():
            timed_prefill(model, prompt[:, :16], False)  # first-run allocations out of the measurement
        times: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
        for _ in range(repeats):
            for case in PREFILL_CASES:
                times[case].append(timed_prefill(models[case[1]], prompt, case[0] == "every position"))
        for (logits, threads), samples in times.items():
            wall, cpu = statistics.median(s[0] for s in samples), statistics.median(s[1] for s in samples)
            rows.append({"variant": name, "logits": logits, "threads": threads, "tokens": prompt_tokens,
                         "tokens_per_s": prompt_tokens / wall, "tokens_per_cpu_s": prompt_tokens / cpu,
                         "repeats": repeats})
    return rows


PROFILED_PREFILLS = ("onnx-fp32", "onnx-int8", "onnx-int4")  # the target's two variants, and fp32 to compare


def profile_prefill_ops(model_dir: Path, prompt_tokens: int) -> dict[str, list[dict]]:
    """ONNX Runtime's profiler over one `prompt_tokens`-token prefill (last position's logits, one thread) of each
    variant in PROFILED_PREFILLS, after an unprofiled one: kernel time per operator type."""
    prompt = np.random.default_rng(0).integers(100, 40_000, size=(1, prompt_tokens))
    folders = variant_folders(model_dir)
    profiles = {}
    for name in (n for n in PROFILED_PREFILLS if n in folders):
        model = profiled_model(folders[name], 1)
        for _ in range(2):
            model.forward(0, prompt, [prompt_tokens])
        profiles[name] = operator_times(profile_events(model), per=1, counted=lambda run: run >= 1)
    return profiles


# --- threads ----------------------------------------------------------------------------------------------------


def bench_threads(model_dir: Path, repeats: int, tokens: int, levels: list[int]) -> list[dict]:
    """onnx-int4 served with one intra-op thread and with two: decode tokens/s at each level of streams."""
    folder = variant_folders(model_dir)[LONG_PROMPT_VARIANT]
    engines = {threads: engine_for(folder, max_batch_size=max(levels), threads=threads) for threads in (1, 2)}
    speeds: dict[tuple[int, int], list[float]] = defaultdict(list)
    for _ in range(repeats):
        for streams in levels:
            for threads, engine in engines.items():
                speeds[(threads, streams)].append(stream_figures(engine, streams, tokens)["tokens_per_s"])
    for engine in engines.values():
        engine.shutdown()
    return [{"variant": LONG_PROMPT_VARIANT, "threads": threads, "streams": streams,
             "tokens_per_s": statistics.median(samples), "repeats": repeats}
            for (threads, streams), samples in sorted(speeds.items())]


def machine_load() -> dict:
    """The 1-minute load average against the CPUs this process may use, at the time of the call."""
    return {"load_average": os.getloadavg()[0], "usable_cpus": len(os.sched_getaffinity(0))}


# --- long prompt beside streams ---------------------------------------------------------------------------------


async def streams_and_long_prompt(engine, stream_prompt: list[int], long_prompt: list[int] | None, streams: int,
                                  alone_tokens: int) -> dict:
    """`streams` greedy streams; with no `long_prompt`, their gaps between tokens over `alone_tokens` tokens each;
    else, once each has a token, the long prompt arrives, and the gaps that ended after its arrival, up to each
    stream's first token after the long prompt's first (then the streams stop). An output of k tokens counts k
    equal gaps. Also the long prompt's TTFT."""
    from serving.engines.base import SamplingParams
    from serving.engines.onnx_engine import collect

    gaps: list[tuple[float, float]] = []  # (end time, gap)
    started, done = [0], asyncio.Event()
    params = SamplingParams(max_tokens=engine.config.context_length - len(stream_prompt), temperature=0,
                            ignore_eos=True)

    async def stream(index: int) -> None:
        last, count = None, 0
        # Closing the stream when leaving it early aborts the request, so it does not decode on into later runs.
        async with aclosing(engine.generate(f"stream-{index}-{time.monotonic_ns()}", stream_prompt, params)) as outs:
            async for output in outs:
                now, count = time.perf_counter(), count + len(output.token_ids)
                if last is None:
                    started[0] += 1
                else:
                    gaps.extend([(now, (now - last) / len(output.token_ids))] * len(output.token_ids))
                last = now
                if done.is_set() or (long_prompt is None and count > alone_tokens):
                    return

    async def long_request() -> tuple[float, float]:
        while started[0] < streams:
            await asyncio.sleep(0.005)
        sent = time.perf_counter()
        await collect(engine.generate(f"long-{time.monotonic_ns()}", long_prompt, SamplingParams(max_tokens=1)))
        done.set()
        return sent, time.perf_counter()

    jobs = [stream(i) for i in range(streams)] + ([long_request()] if long_prompt is not None else [])
    results = await asyncio.gather(*jobs)
    if long_prompt is None:
        return {"gaps": [gap for _, gap in gaps], "long_ttft_s": None}
    sent, answered = results[-1]
    return {"gaps": [gap for end, gap in gaps if end > sent], "long_ttft_s": answered - sent}


def bench_long_prompt(model_dir: Path, repeats: int, long_tokens: int, streams: int, tokens: int) -> list[dict]:
    """p99 and median inter-token latency of `streams` streams alone (over `tokens` tokens each), and while a
    `long_tokens`-token prompt arrives and is prefilled, with chunked prefill on (the default settings) and off
    (each prompt whole)."""
    folder = variant_folders(model_dir)[LONG_PROMPT_VARIANT]
    settings = {"max_batch_size": streams + 1, "context_length": long_tokens + 64, "prefix_cache_mib": 0}
    engines = {"chunked": engine_for(folder, **settings), "whole": engine_for(folder, prefill_chunk_tokens=0,
                                                                               **settings)}
    stream_prompt = filler_ids(engines["chunked"], 24, seed=1)
    figures: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for repeat in range(repeats):
        long_prompt = filler_ids(engines["chunked"], long_tokens, seed=100 + repeat)
        for mode, engine in engines.items():
            for case, prompt in (("streams alone", None), ("long prompt arrives", long_prompt)):
                figures[(mode, case)].append(run(streams_and_long_prompt(engine, stream_prompt, prompt, streams,
                                                                         tokens)))
    chunk_tokens = engines["chunked"].batcher.planner.decoding_tokens  # the size the planner settled on
    for engine in engines.values():
        engine.shutdown()
    rows = []
    for (mode, case), runs in figures.items():
        gaps = [gap for one in runs for gap in one["gaps"]]
        ttfts = [one["long_ttft_s"] for one in runs if one["long_ttft_s"] is not None]
        rows.append({"variant": LONG_PROMPT_VARIANT, "prefill": mode, "case": case, "streams": streams,
                     "long_tokens": long_tokens, "itl_p99_ms": float(np.percentile(gaps, 99)) * 1000,
                     "itl_p50_ms": statistics.median(gaps) * 1000, "samples": len(gaps),
                     "long_ttft_s": statistics.median(ttfts) if ttfts else None, "repeats": repeats,
                     "chunk_tokens": chunk_tokens if mode == "chunked" else None})
    return rows


def profile_chunk_beside_step(model_dir: Path, streams: int, chunk_tokens: int, steps: int) -> dict:
    """ONNX Runtime's profiler over `steps` iterations of what chunked prefill runs while `streams` decode: their
    decode step, then a `chunk_tokens`-token chunk of a prompt in the next slot; kernel time per operator type of
    each, per iteration."""
    model = profiled_model(variant_folders(model_dir)[LONG_PROMPT_VARIANT], streams + 1)
    stream_prompt, long_prompt = np.arange(1, 33)[None, :], np.arange(100, 164)[None, :]
    for slot in range(streams):
        model.forward(slot, stream_prompt, [stream_prompt.shape[1]])
    model.forward(streams, long_prompt, [long_prompt.shape[1]])
    tokens = np.ones((streams, 1), np.int64)
    chunk = np.arange(200, 200 + chunk_tokens)[None, :]
    for step in range(steps):
        model.forward(0, tokens, [stream_prompt.shape[1] + step + 1] * streams)
        model.forward(streams, chunk, [long_prompt.shape[1] + (step + 1) * chunk_tokens])
    first = streams + 1  # runs before the iterations: the prefills
    events = profile_events(model)
    return {"streams": streams, "chunk_tokens": chunk_tokens,
            "decode_step": operator_times(events, steps, lambda run: run >= first and (run - first) % 2 == 0),
            "chunk": operator_times(events, steps, lambda run: run >= first and (run - first) % 2 == 1)}


# --- prefix cache -----------------------------------------------------------------------------------------------


def first_token(engine, prompt_ids: list[int], request_id: str) -> dict:
    from serving.engines.base import SamplingParams
    from serving.engines.onnx_engine import collect

    async def one() -> dict:
        sent = time.perf_counter()
        output = await collect(engine.generate(request_id, prompt_ids, SamplingParams(max_tokens=1, temperature=0)))
        return {"ttft_s": time.perf_counter() - sent, "queue_s": output.queue_seconds,
                "prefill_s": output.prefill_seconds, "first_sample_s": output.first_sample_seconds,
                "cached_tokens": output.cached_tokens or 0, "prompt_tokens": output.prompt_tokens}

    return run(one())


SHORT_CHATS = ("What is the capital of France?", "Name three primary colours.")


def bench_prefix_cache(model_dir: Path, repeats: int, prefix_tokens: int) -> list[dict]:
    """Time to first token of a request with a new `prefix_tokens`-token prefix, then of one sharing it (another
    question after it); and of two short chat requests to a fresh engine, which share only the chat template's
    default system prompt. With the prefix cache on and off."""
    folder = variant_folders(model_dir)[LONG_PROMPT_VARIANT]
    settings = {"max_batch_size": 2, "context_length": prefix_tokens + 64}
    cache_off = {"prefix_cache_mib": 0}
    long_prompt = f"{prefix_tokens}-token prefix"
    samples: dict[tuple[str, str, str], list[dict]] = defaultdict(list)

    def requests(prompt: str, mode: str, engine, cases: list[tuple[str, list[int]]], repeat: int) -> None:
        for order, ids in cases:
            samples[(prompt, mode, order)].append(
                first_token(engine, ids, f"{mode}-{order}-{repeat}-{time.monotonic_ns()}"))

    engines = {"on": engine_for(folder, **settings), "off": engine_for(folder, **cache_off, **settings)}
    encode = engines["on"].encode
    for repeat in range(repeats):
        prefix = filler_ids(engines["on"], prefix_tokens, seed=500 + repeat)
        cases = [("first", prefix + encode(" Which ships came in?")),
                 ("sharing", prefix + encode(" Which ships left?"))]
        for mode, engine in engines.items():
            requests(long_prompt, mode, engine, cases, repeat)
        for mode, extra in (("on", {}), ("off", cache_off)):  # fresh engines: nothing of the template cached yet
            engine = engine_for(folder, **extra, **settings)
            chats = [engine.encode(engine.render_chat([{"role": "user", "content": question}]))
                     for question in SHORT_CHATS]
            requests("short chat", mode, engine, list(zip(("first", "sharing"), chats, strict=True)), repeat)
            engine.shutdown()
    for engine in engines.values():
        engine.shutdown()
    return [{"variant": LONG_PROMPT_VARIANT, "prompt": prompt, "cache": mode, "request": order,
             "prefix_tokens": prefix_tokens, "repeats": repeats,
             **{key: statistics.median(s[key] for s in runs) for key in runs[0]}}
            for (prompt, mode, order), runs in samples.items()]