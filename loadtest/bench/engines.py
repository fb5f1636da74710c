"""In-process engine benchmarks: decode against the memory-bandwidth ceiling (with where the time goes),
continuous batching against transformers `generate`, and the ONNX engine against vLLM's at the same precision.

Every engine call runs on one event loop that lives as long as the benchmark (vLLM's engine is bound to the
loop it was created on).
"""

from __future__ import annotations

import asyncio
import bisect
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from quantserve.manifest import read_manifest

CHAT_VARIANTS = ("onnx-fp32", "onnx-int8", "onnx-int4", "gptq-int4")
PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16"}
LOOP = asyncio.new_event_loop()


def run(coroutine):
    return LOOP.run_until_complete(coroutine)


def memory_bandwidth_gbs(size_mb: int = 512) -> float:
    """Bytes read + written per second by one large array copy (one thread)."""
    source = np.ones(size_mb * 1024 * 1024 // 8)
    target = np.empty_like(source)
    np.copyto(target, source)  # touch both once
    started = time.perf_counter()
    np.copyto(target, source)
    return 2 * source.nbytes / (time.perf_counter() - started) / 1e9


def variant_folder(model_dir: Path, name: str) -> Path:
    """The folder the ONNX engine loads for a built variant (its manifest's serve path)."""
    return model_dir / name / read_manifest(model_dir).variants[name].serve_paths["onnx"]


def onnx_engine(folder: Path, slots: int):
    from serving.engines.onnx_engine import OnnxEngine, OnnxEngineConfig

    return OnnxEngine(OnnxEngineConfig(folder, max_batch_size=slots, max_queue=64, context_length=512, threads=1))


def vllm_engine(model_dir: Path, slots: int, dtype: str):
    """vLLM's engine over the base folder, its caches inside the model folder."""
    from serving.engines.vllm_engine import VllmEngine, VllmEngineConfig

    engine = VllmEngine(VllmEngineConfig(model_dir / "base", f"bench-{dtype}", max_batch_size=slots,
                                         context_length=512, dtype=dtype, cache_dir=model_dir / ".cache" / "vllm"))
    run(engine.start())
    return engine


def stream_figures(engine, streams: int, tokens: int, params=None) -> dict[str, float]:
    """`streams` requests of at most `tokens` tokens (greedy unless `params` says otherwise) started together:
    total tokens/s and median TTFT."""
    from serving.engines.base import SamplingParams

    prompt_ids = engine.encode(engine.render_chat(PROMPT))
    params = params or SamplingParams(max_tokens=tokens, temperature=0)

    async def one(index: int) -> tuple[float, int]:
        started, first, generated = time.perf_counter(), None, 0
        async for output in engine.generate(f"bench-{index}-{time.monotonic_ns()}", prompt_ids, params):
            first = first or time.perf_counter() - started
            generated = output.completion_tokens
        return first, generated

    async def together() -> list[tuple[float, int]]:
        return await asyncio.gather(*(one(i) for i in range(streams)))

    started = time.perf_counter()
    results = run(together())
    elapsed = time.perf_counter() - started
    return {"tokens_per_s": sum(g for _, g in results) / elapsed, "ttft_s": statistics.median(f for f, _ in results)}


def transformers_tokens_per_second(model, tokenizer, streams: int, tokens: int) -> float:
    import torch

    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    batch = tokenizer([text] * streams, return_tensors="pt", add_special_tokens=False)
    started = time.perf_counter()
    with torch.no_grad():
        model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                       pad_token_id=tokenizer.eos_token_id)
    return streams * tokens / (time.perf_counter() - started)


# --- 3. hardware limit -------------------------------------------------------------------------------------------


def bench_ceiling(model_dir: Path, repeats: int, tokens: int) -> list[dict]:
    """Batch-1 decode of each variant as a fraction of bandwidth / weight bytes, and the share of the time spent
    inside ONNX Runtime (the rest is Python: sampling, detokenizing, scheduling)."""
    manifest = read_manifest(model_dir)
    engines = {name: onnx_engine(model_dir / name / manifest.variants[name].serve_paths["onnx"], 1)
               for name in CHAT_VARIANTS if name in manifest.variants}
    speeds: dict[str, list[float]] = defaultdict(list)
    in_runtime: dict[str, list[float]] = defaultdict(list)
    bandwidth = []
    for _ in range(repeats):  # interleaved: every variant and the bandwidth once per round
        bandwidth.append(memory_bandwidth_gbs())
        for name, engine in engines.items():
            busy, started = engine.stats().busy_seconds_total, time.perf_counter()
            speeds[name].append(stream_figures(engine, 1, tokens)["tokens_per_s"])
            in_runtime[name].append((engine.stats().busy_seconds_total - busy) / (time.perf_counter() - started))
    for engine in engines.values():
        engine.shutdown()
    gbs = statistics.median(bandwidth)
    rows = []
    for name in engines:
        weight_bytes = manifest.variants[name].total_bytes
        ceiling, speed = gbs * 1e9 / weight_bytes, statistics.median(speeds[name])
        rows.append({"variant": name, "fraction_of_ceiling": speed / ceiling, "tokens_per_s": speed,
                     "ceiling_tokens_per_s": ceiling, "weight_mb": weight_bytes / 1e6, "bandwidth_gbs": gbs,
                     "share_in_onnxruntime": statistics.median(in_runtime[name])})
    return rows


def profiled_model(folder: Path, slots: int):
    """A SlotKVModel with ONNX Runtime's profiler on (read it with `profile_events`)."""
    from serving.engines.onnx_model import SlotKVModel

    return SlotKVModel(folder, slots=slots, context_length=512,
                       profile_prefix=str(Path("/tmp") / f"quantserve-profile-{time.monotonic_ns()}"))


def profile_events(model) -> list[dict]:
    """The profiled model's trace (its profiling ends here)."""
    trace = Path(model.session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    return events


def operator_times(events: list[dict], per: int, counted=lambda run: True) -> list[dict]:
    """Kernel time per operator type over the traced runs whose index `counted` accepts, ÷ `per`."""
    runs = sorted(event["ts"] for event in events if event.get("name") == "model_run")
    per_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            run_index = bisect.bisect_right(runs, event["ts"]) - 1  # the run that started last before this node
            if counted(run_index):
                per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values())
    return [{"op": op, "share": micros / total, "ms_per_step": micros / 1000 / per}
            for op, micros in sorted(per_op.items(), key=lambda item: -item[1])]


def profile_decode_ops(folder: Path, steps: int, batch: int = 1) -> list[dict]:
    """ONNX Runtime's own profiler over `steps` decode steps of `batch` sequences together (their prefills run
    first and are left out): time per operator type, per step."""
    model = profiled_model(folder, batch)
    prompt = np.arange(1, 33)[None, :]
    tokens = np.array([[int(np.argmax(model.forward(slot, prompt, [prompt.shape[1]])[0, -1]))]
                       for slot in range(batch)])
    for step in range(steps):
        logits = model.forward(0, tokens, [prompt.shape[1] + step + 1] * batch)
        tokens = logits[:, -1].argmax(axis=1)[:, None]
    return operator_times(profile_events(model), per=steps, counted=lambda run: run >= batch)


# --- 2. continuous batching ----------------------------------------------------------------------------------------


def bench_batching(model_dir: Path, levels: list[int], repeats: int, tokens: int) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)  # the engine uses one intra-op thread too
    base = model_dir / "base"
    tokenizer = AutoTokenizer.from_pretrained(base, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    engine = onnx_engine(model_dir / "onnx-fp32", max(levels))
    ours: dict[int, list[float]] = defaultdict(list)
    theirs: dict[int, list[float]] = defaultdict(list)
    for _ in range(repeats):
        for n in levels:
            ours[n].append(stream_figures(engine, n, tokens)["tokens_per_s"])
            theirs[n].append(transformers_tokens_per_second(model, tokenizer, n, tokens))
    engine.shutdown()
    single = statistics.median(ours[levels[0]])
    rows = []
    for n in levels:
        mine, hf = statistics.median(ours[n]), statistics.median(theirs[n])
        rows.append({"streams": n, "scaling_vs_1_stream": mine / single, "vs_transformers": mine / hf,
                     "tokens_per_s": mine, "transformers_tokens_per_s": hf})
    return rows


# --- 4. backends ---------------------------------------------------------------------------------------------------


def bench_backends(model_dir: Path, levels: list[int], repeats: int, tokens: int, dtypes: list[str]) -> list[dict]:
    """The ONNX engine (onnx-fp32) against vLLM's engine on the same float32 weights (the base folder), and vLLM in
    bfloat16 (what quantserve.yaml serves) for context; every engine in this process, one thread of compute each."""
    engines = {"onnx fp32": onnx_engine(model_dir / "onnx-fp32", max(levels))}
    for dtype in dtypes:
        engines[f"vllm {DTYPE_NAMES[dtype]}"] = vllm_engine(model_dir, max(levels), dtype)
    samples: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for _ in range(repeats):
        for n in levels:
            for name, engine in engines.items():
                samples[(name, n)].append(stream_figures(engine, n, tokens))
    for engine in engines.values():
        engine.shutdown()
    rows = []
    for n in levels:
        onnx = _medians(samples[("onnx fp32", n)])
        for name in (f"vllm {DTYPE_NAMES[d]}" for d in dtypes):
            vllm = _medians(samples[(name, n)])
            rows.append({"streams": n, "vllm": name, "onnx_over_vllm_tokens_per_s": onnx["tokens_per_s"]
                         / vllm["tokens_per_s"], "vllm_over_onnx_ttft": vllm["ttft_s"] / onnx["ttft_s"],
                         "onnx_tokens_per_s": onnx["tokens_per_s"], "vllm_tokens_per_s": vllm["tokens_per_s"],
                         "onnx_ttft_ms": onnx["ttft_s"] * 1000, "vllm_ttft_ms": vllm["ttft_s"] * 1000})
    return rows


def _medians(figures: list[dict]) -> dict[str, float]:
    return {key: statistics.median(f[key] for f in figures) for key in figures[0]}
