"""`make bench`: in-process benchmarks of the ONNX engine, reported as ratios measured side by side.

So far (the rest of the benchmark issue is open): (1) each variant's batch-1 decode speed as a fraction of
the memory-bandwidth ceiling measured in the same run, and (2) continuous-batching throughput at several
concurrent streams against Hugging Face transformers' `generate` with the same batch. Every figure is the
median of `--repeats` interleaved measurements. Writes bench/results.json and BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from quantize.manifest import read_manifest

CHAT_VARIANTS = ("onnx-fp32", "onnx-int8", "onnx-int4", "gptq-int4")
PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def memory_bandwidth_gbs(size_mb: int = 512) -> float:
    """Bytes read + written per second by one large array copy (one thread)."""
    source = np.ones(size_mb * 1024 * 1024 // 8)
    target = np.empty_like(source)
    np.copyto(target, source)  # touch both once
    started = time.perf_counter()
    np.copyto(target, source)
    return 2 * source.nbytes / (time.perf_counter() - started) / 1e9


def engine_for(folder: Path, slots: int):
    from serving.engines.onnx_engine import OnnxEngine, OnnxEngineConfig

    return OnnxEngine(OnnxEngineConfig(folder, max_batch_size=slots, max_queue=64, context_length=512, threads=1))


def engine_tokens_per_second(engine, streams: int, tokens: int) -> float:
    """Generated tokens per second with `streams` greedy requests decoding together."""
    from serving.engines.base import SamplingParams
    from serving.engines.onnx_engine import collect

    prompt = engine.render_chat(PROMPT)
    params = SamplingParams(max_tokens=tokens, temperature=0)

    async def run() -> int:
        outputs = await asyncio.gather(*(collect(engine.generate(f"b{i}-{time.monotonic_ns()}", prompt, params))
                                         for i in range(streams)))
        return sum(o.completion_tokens for o in outputs)

    started = time.perf_counter()
    generated = asyncio.run(run())
    return generated / (time.perf_counter() - started)


def transformers_tokens_per_second(model, tokenizer, streams: int, tokens: int) -> float:
    import torch

    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    batch = tokenizer([text] * streams, return_tensors="pt", add_special_tokens=False)
    started = time.perf_counter()
    with torch.no_grad():
        model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                       pad_token_id=tokenizer.eos_token_id)
    return streams * tokens / (time.perf_counter() - started)


def bench_ceiling(model_dir: Path, repeats: int, tokens: int) -> list[dict]:
    manifest = read_manifest(model_dir)
    engines = {name: engine_for(model_dir / name / manifest.variants[name].serve_paths["onnx"], 1)
               for name in CHAT_VARIANTS if name in manifest.variants}
    samples: dict[str, list[float]] = {name: [] for name in engines}
    bandwidth = []
    for _ in range(repeats):  # interleaved: every variant and the bandwidth once per round
        bandwidth.append(memory_bandwidth_gbs())
        for name, engine in engines.items():
            samples[name].append(engine_tokens_per_second(engine, 1, tokens))
    for engine in engines.values():
        engine.shutdown()
    gbs = statistics.median(bandwidth)
    rows = []
    for name, speeds in samples.items():
        weight_bytes = manifest.variants[name].total_bytes
        ceiling = gbs * 1e9 / weight_bytes
        speed = statistics.median(speeds)
        rows.append({"variant": name, "fraction_of_ceiling": speed / ceiling, "tokens_per_s": speed,
                     "ceiling_tokens_per_s": ceiling, "weight_mb": weight_bytes / 1e6, "bandwidth_gbs": gbs})
    return rows


def bench_batching(model_dir: Path, levels: list[int], repeats: int, tokens: int) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)  # the engine uses one intra-op thread too
    base = model_dir / "base"
    tokenizer = AutoTokenizer.from_pretrained(base, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    engine = engine_for(model_dir / "onnx-fp32", max(levels))
    ours: dict[int, list[float]] = {n: [] for n in levels}
    theirs: dict[int, list[float]] = {n: [] for n in levels}
    for _ in range(repeats):
        for n in levels:
            ours[n].append(engine_tokens_per_second(engine, n, tokens))
            theirs[n].append(transformers_tokens_per_second(model, tokenizer, n, tokens))
    engine.shutdown()
    single = statistics.median(ours[levels[0]])
    rows = []
    for n in levels:
        mine, hf = statistics.median(ours[n]), statistics.median(theirs[n])
        rows.append({"streams": n, "scaling_vs_1_stream": mine / single, "vs_transformers": mine / hf,
                     "tokens_per_s": mine, "transformers_tokens_per_s": hf})
    return rows


def render_markdown(results: dict) -> str:
    lines = ["# Benchmarks", "", f"Run {results['date']} on {results['machine']}; `make bench` "
             f"(repeats {results['repeats']}, {results['tokens']} tokens per request). Every figure is a median; "
             "ratios are of two things measured in the same run, interleaved.", "",
             "## Batch-1 decode against the memory-bandwidth ceiling", "",
             "Ceiling = measured copy bandwidth ÷ bytes of weights read per token (the variant's size).", "",
             "| variant | fraction of ceiling | tok/s | ceiling tok/s | weights MB | bandwidth GB/s |",
             "|---|---|---|---|---|---|"]
    for row in results["ceiling"]:
        lines.append(f"| {row['variant']} | {row['fraction_of_ceiling']:.2f} | {row['tokens_per_s']:.1f} | "
                     f"{row['ceiling_tokens_per_s']:.0f} | {row['weight_mb']:.0f} | {row['bandwidth_gbs']:.1f} |")
    lines += ["", "Speeds are whole greedy requests (a ~40-token chat prompt's prefill included) through the engine, "
              "one ONNX Runtime thread. Not profiled yet: the 4-bit variants' distance from their ceiling is "
              "expected to be compute (MatMulNBits with int8 activations on AVX2) and per-step overhead (the full "
              "49,152-wide logits row copied and sampled in Python), not memory.",
              "", "## Continuous batching (onnx-fp32) against transformers `generate` (fp32, same batch)", "",
              "| streams | x 1 stream | x transformers | tok/s | transformers tok/s |", "|---|---|---|---|---|"]
    for row in results["batching"]:
        lines.append(f"| {row['streams']} | {row['scaling_vs_1_stream']:.2f} | {row['vs_transformers']:.2f} | "
                     f"{row['tokens_per_s']:.1f} | {row['transformers_tokens_per_s']:.1f} |")
    lines += ["", "Same prompt in every stream, started together; transformers runs fp32 with one torch thread and "
              "left padding. Not measured here yet (open): router overhead, ONNX against vLLM, $ per 1M tokens per "
              "variant from a load test (see the README's results), and the load generator's headroom."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench", description=__doc__)
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--quick", action="store_true", help="one round, short outputs: keeps the script working")
    parser.add_argument("--output", default="bench", help="folder for results.json (default: %(default)s)")
    parser.add_argument("--markdown", default="BENCHMARKS.md")
    args = parser.parse_args(argv)
    repeats, tokens, levels = (1, 8, [1, 2]) if args.quick else (3, 48, [1, 2, 4, 8])
    model_dir = Path(args.models_dir) / "smollm2-135m"
    if read_manifest(model_dir) is None:
        print(f"bench: nothing built in {model_dir}; run `make variants` first", file=sys.stderr)
        return 2
    print("bench: decode against the bandwidth ceiling", flush=True)
    ceiling = bench_ceiling(model_dir, repeats, tokens)
    print("bench: continuous batching against transformers", flush=True)
    batching = bench_batching(model_dir, levels, repeats, tokens)
    results = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "quick": args.quick, "repeats": repeats,
               "tokens": tokens, "machine": f"{platform.processor() or platform.machine()}, "
               f"{__import__('os').cpu_count()} CPUs, Python {platform.python_version()}",
               "ceiling": ceiling, "batching": batching}
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(results))
    print(render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
