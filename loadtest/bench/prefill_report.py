"""BENCHMARKS.md sections for the prompt-side benchmarks (loadtest/bench/prefill.py). Every sentence is computed
from the recorded figures and CPU flags: targets are said met or missed by the numbers, limits named from them."""

from __future__ import annotations

from loadtest.bench.isa import vector_isa
from loadtest.bench.markdown import figure as _f
from loadtest.bench.markdown import table as _table

PREFILL_TARGET = 2.0  # issue 16: prefill tokens/s on a 512-token prompt >= 2x the path before it
LONG_PROMPT_TARGET = 2.0  # p99 inter-token latency with a long prompt arriving <= 2x the streams' own
PREFIX_TARGET = 5.0  # time to first token of a request sharing the prefix >= 5x sooner than the first
BASELINE = ("every position", 1)


def _load(row: dict) -> str:
    return f"load average {row['load_average']:.1f} on {row['usable_cpus']} usable CPUs"


def _busy(row: dict) -> str:
    """A sentence when other processes competed for the CPUs while the section ran (its load was recorded)."""
    if "load_average" not in row or row["load_average"] <= row["usable_cpus"]:
        return ""
    return (f" The machine was busy while this ran ({_load(row)}): wall-clock figures include time spent waiting for "
            "a CPU, and ratios of them are rough.")


def _verdict(value: float, target: float, at_least: bool = True) -> str:
    met = value >= target if at_least else value <= target
    return f"{'meets' if met else 'misses'} the target ({'≥' if at_least else '≤'} {target:g}x)"


def prefill_section(rows: list[dict], machine: dict, profiles: dict[str, list[dict]] | None = None) -> list[str]:
    by = {(r["variant"], r["logits"], r["threads"]): r for r in rows}
    tokens = rows[0]["tokens"]
    lines = [f"## 8. Prefill of a {tokens}-token prompt", "",
             "Straight on each variant's model, one prefill after another, each case once per repeat: logits for "
             "every position (the path before issue 16) or the last position only, with one or two intra-op "
             "threads. *x before* is tokens/s over the every-position, one-thread case; *per CPU-s* divides by "
             "the CPU seconds the process used, which a busy neighbour does not stretch.", ""]
    table = []
    for r in rows:
        before = by[(r["variant"], *BASELINE)]
        table.append([r["variant"], r["logits"], str(r["threads"]), _f(r["tokens_per_s"] / before["tokens_per_s"], 2),
                      _f(r["tokens_per_s"], 0), _f(r["tokens_per_cpu_s"], 0)])
    lines += _table(["variant", "logits for", "threads", "x before", "tokens/s", "tokens per CPU-s"], table)
    lines += ["", prefill_paragraph(by, machine, rows[0])]
    return lines + (["", *prefill_profile(profiles, tokens)] if profiles else [])


def prefill_profile(profiles: dict[str, list[dict]], tokens: int) -> list[str]:
    """Where one prefill's kernel time goes, per variant: the operators that take most of it."""
    lines = [f"Profile of one {tokens}-token prefill (last position's logits, one thread; ONNX Runtime's profiler, "
             "kernel time per operator type, the five largest):", ""]
    lines += _table(["variant", "operator", "ms", "share"],
                    [[variant, p["op"], _f(p["ms_per_step"], 0), _f(p["share"] * 100, 1, " %")]
                     for variant, ops in profiles.items() for p in ops[:5]])
    return [*lines, "", prefill_profile_paragraph(profiles, tokens)]


def _kernel_ms(ops: list[dict]) -> float:
    return sum(p["ms_per_step"] for p in ops)


def _matmul_ms(ops: list[dict]) -> float:
    return sum(p["ms_per_step"] for p in ops if "MatMul" in p["op"])


def prefill_profile_paragraph(profiles: dict[str, list[dict]], tokens: int) -> str:
    shares = ", ".join(f"{variant} {_matmul_ms(ops) / _kernel_ms(ops):.0%}"
                       for variant, ops in profiles.items())
    text = f"Matrix multiplications take most of each prefill ({shares} of its kernel time)."
    fp32 = profiles.get("onnx-fp32")
    if not fp32:
        return text
    for variant, ops in profiles.items():
        if variant == "onnx-fp32":
            continue
        ratio = _matmul_ms(ops) / _matmul_ms(fp32)
        text += (f" {variant}'s take {_matmul_ms(ops):.0f} ms against onnx-fp32's {_matmul_ms(fp32):.0f} ms "
                 f"({ratio:.2f}x)")
        text += (": its smaller weights do not make prefill faster. Prefill multiplies every weight by "
                 f"{tokens} rows at once, which is arithmetic, not bytes read, and the quantized kernel unpacks and "
                 "scales its weight blocks to do it." if ratio >= 0.8 else
                 f": its smaller weights make the matrix work {1 / ratio:.2f}x faster.")
    return text


def prefill_paragraph(by: dict, machine: dict, any_row: dict) -> str:
    sentences = []
    for variant in dict.fromkeys(key[0] for key in by):
        before, one, two = (by[(variant, *case)] for case in (BASELINE, ("last position", 1), ("last position", 2)))
        best = max(one, two, key=lambda r: r["tokens_per_s"])
        gain = best["tokens_per_s"] / before["tokens_per_s"]
        head = 1 - before["tokens_per_cpu_s"] / one["tokens_per_cpu_s"]
        sentences.append(f"{variant}: {_f(gain, 2)}x before with the last position only and {best['threads']} "
                         f"thread{'s' if best['threads'] > 1 else ''} ({_verdict(gain, PREFILL_TARGET)}); the lm_head "
                         f"over every position was {_f(head * 100, 0)} % of the CPU work, and a second thread made "
                         f"{_f(two['tokens_per_s'] / one['tokens_per_s'], 2)}x the tokens/s of one")
    int8, fp32 = by.get(("onnx-int8", "last position", 1)), by.get(("onnx-fp32", "last position", 1))
    if int8 and fp32:
        slower = fp32["tokens_per_cpu_s"] / int8["tokens_per_cpu_s"]
        sentences.append(f"per CPU second onnx-int8 prefills {_f(max(slower, 1 / slower), 2)}x "
                         f"{'slower' if slower > 1 else 'faster'} than onnx-fp32"
                         + (": its 8-bit MatMulNBits kernel (int8 activations) costs more per token than fp32 SGEMM "
                            "on prompt-sized matrices" if slower > 1 else ""))
    sentences.append(f"What limits it: prefill is compute-bound matrix work on {vector_isa(machine.get('cpu_flags'))}; "
                     f"a second thread helps only with a free core ({_load(any_row)} when this section ran)")
    return ". ".join(sentences) + "." + _busy(any_row)


def threads_section(rows: list[dict], machine: dict) -> list[str]:
    lines = [f"## 9. Intra-op threads per replica ({rows[0]['variant']})", "",
             "The same engine built with one and with two ONNX Runtime intra-op threads; greedy streams started "
             "together, tokens/s of all of them.", ""]
    by = {(r["threads"], r["streams"]): r for r in rows}
    levels = sorted({r["streams"] for r in rows})
    lines += _table(["streams", "1 thread tok/s", "2 threads tok/s", "2 ÷ 1"],
                    [[str(n), _f(by[(1, n)]["tokens_per_s"]), _f(by[(2, n)]["tokens_per_s"]),
                      _f(by[(2, n)]["tokens_per_s"] / by[(1, n)]["tokens_per_s"], 2)] for n in levels])
    faster = [n for n in levels if by[(2, n)]["tokens_per_s"] > by[(1, n)]["tokens_per_s"]]
    verdict = ("two threads are faster at every level" if len(faster) == len(levels) else
               "one thread is faster at every level" if not faster else
               f"two threads are faster at {', '.join(map(str, faster))} streams only")
    return [*lines, "", f"On this machine ({machine['logical_cpus']} logical CPUs, {_load(rows[0])}) {verdict}; "
            "`serve.threads` unset gives a replica one thread per whole CPU of its `num_cpus`." + _busy(rows[0])]


def long_prompt_section(rows: list[dict], profile: dict | None = None) -> list[str]:
    first = rows[0]
    by = {(r["prefill"], r["case"]): r for r in rows}
    lines = [f"## 10. A {first['long_tokens']}-token prompt arriving beside {first['streams']} decoding streams "
             f"({first['variant']})", "",
             "Inter-token latency of the streams alone, and from the long prompt's arrival to their first token "
             "after its first; chunked prefill on (default settings) and off (each prompt whole, as before).", ""]
    table = []
    for mode in ("chunked", "whole"):
        alone, arriving = by[(mode, "streams alone")], by[(mode, "long prompt arrives")]
        table.append([mode, _f(arriving["itl_p99_ms"] / alone["itl_p99_ms"], 2), _f(alone["itl_p99_ms"]),
                      _f(arriving["itl_p99_ms"]), _f(alone["itl_p50_ms"]), _f(arriving["itl_p50_ms"]),
                      f"{alone['samples']} / {arriving['samples']}", _f(arriving["long_ttft_s"], 2)])
    lines += _table(["prefill", "p99 ratio", "p99 ms alone", "p99 ms arriving", "p50 ms alone", "p50 ms arriving",
                     "samples", "long prompt TTFT s"], table)
    chunked = by[("chunked", "long prompt arrives")]["itl_p99_ms"] / by[("chunked", "streams alone")]["itl_p99_ms"]
    whole = by[("whole", "long prompt arrives")]["itl_p99_ms"] / by[("whole", "streams alone")]["itl_p99_ms"]
    cost = by[("chunked", "long prompt arrives")]["long_ttft_s"] / by[("whole", "long prompt arrives")]["long_ttft_s"]
    verdict = _verdict(chunked, LONG_PROMPT_TARGET, at_least=False)
    return [*lines, "", f"With chunked prefill the streams' p99 rises {_f(chunked, 2)}x ({verdict}); with each "
            f"prompt whole it rises {_f(whole, 1)}x. The price is "
            f"the long prompt's own first token, {_f(cost, 2)}x later: each chunk is sized to take about "
            "`prefill_share` of a decode step, and a decode step is memory-bound where prefill is compute-bound, so "
            f"the chunks are small{_chunk_size(by)}." + _busy(first)] + (_chunk_profile(profile) if profile else [])


def _chunk_size(by: dict) -> str:
    chunk = by[("chunked", "long prompt arrives")].get("chunk_tokens")
    return "" if chunk is None else f" (the planner settled on {chunk:.1f} tokens; it never runs fewer than 2)"


def _chunk_profile(profile: dict) -> list[str]:
    """What one iteration runs while the long prompt arrives: the streams' decode step, then a chunk."""
    step, chunk = profile["decode_step"], profile["chunk"]
    at_chunk = {p["op"]: p["ms_per_step"] for p in chunk}
    lines = [f"Profile of one such iteration: a {profile['streams']}-stream decode step, then a "
             f"{profile['chunk_tokens']}-token chunk in the next slot (ONNX Runtime's profiler, kernel time per "
             "operator type):", ""]
    lines += _table(["operator", "decode step ms", "chunk ms"],
                    [[p["op"], _f(p["ms_per_step"], 3), _f(at_chunk.get(p["op"]), 3)] for p in step[:5]])
    ratio = _kernel_ms(chunk) / _kernel_ms(step)
    top = step[0]["op"]
    text = (f"The chunk's kernel time is {_kernel_ms(chunk):.1f} ms against the decode step's "
            f"{_kernel_ms(step):.1f} ms ({ratio:.2f}x), {top} {at_chunk.get(top, 0.0) / _kernel_ms(chunk):.0%} of "
            f"the one and {step[0]['share']:.0%} of the other. A chunk is a forward pass of its own, which reads "
            "every weight again, so even the smallest costs about what a decode step does, and the streams' next "
            f"token waits for both: about {1 + ratio:.1f}x their gap alone at every iteration while the prompt is "
            "prefilled. Putting the chunk into the decode step's pass (one read of the weights for both, as vLLM "
            "schedules it) needs attention that takes several new tokens for one sequence beside one token for the "
            "others in one call; the exported graph's GroupQueryAttention takes several new tokens only for one "
            "sequence at a time.")
    return ["", *lines, "", text]


def prefix_cache_section(rows: list[dict]) -> list[str]:
    by = {(r.get("prompt", "long"), r["cache"], r["request"]): r for r in rows}
    long = rows[0].get("prompt", "long")
    lines = [f"## 11. Prefix cache ({rows[0]['variant']}, a {rows[0]['prefix_tokens']}-token shared prefix)", "",
             "A request with a new prefix, then one with the same prefix and another question; and two short chat "
             "requests to a fresh engine, which share only the chat template's default system prompt. Time to first "
             "token and its parts as the engine reports them.", ""]
    lines += _table(["prompt", "cache", "request", "TTFT ms", "queue ms", "prefill ms", "first sample ms",
                     "tokens reused"],
                    [[r.get("prompt", long), r["cache"], r["request"], _f(r["ttft_s"] * 1000, 0),
                      _f(r["queue_s"] * 1000, 1), _f(r["prefill_s"] * 1000, 0), _f(r["first_sample_s"] * 1000, 2),
                      f"{r['cached_tokens']:.0f} of {r['prompt_tokens']:.0f}"] for r in rows])

    def sooner(prompt: str, mode: str) -> float:
        return by[(prompt, mode, "first")]["ttft_s"] / by[(prompt, mode, "sharing")]["ttft_s"]

    on, off = sooner(long, "on"), sooner(long, "off")
    text = (f"With the cache on, the request sharing the prefix reaches its first token {_f(on, 1)}x sooner than the "
            f"first ({_verdict(on, PREFIX_TARGET)}); with it off, {_f(off, 2)}x. What is left is the prefill of the "
            "tokens after the prefix and the copy of the reused positions into the slot.")
    if ("short chat", "on", "sharing") in by:
        hit, cold = by[("short chat", "on", "sharing")], by[("short chat", "off", "sharing")]
        text += (f" A short chat request reuses {hit['cached_tokens']:.0f} of its {hit['prompt_tokens']:.0f} prompt "
                 f"tokens (the template's system prompt) and reaches its first token in {hit['ttft_s'] * 1000:.0f} "
                 f"ms against {cold['ttft_s'] * 1000:.0f} ms with the cache off "
                 f"({cold['ttft_s'] / hit['ttft_s']:.2f}x sooner)"
                 + ("." if cold["ttft_s"] / hit["ttft_s"] >= 1.2 else
                    ": a prompt this short is one pass over the weights either way, so fewer tokens barely shorten "
                    "it."))
    return [*lines, "", text + _busy(rows[0])]
