"""The prompt-side sections of BENCHMARKS.md (loadtest/bench/prefill_report.py) from figures made up here: ratios are
the figures', targets are said met or missed by them, the machine sentence follows the recorded CPU flags."""

from __future__ import annotations

import pytest

from loadtest.bench.prefill_report import (
    long_prompt_section,
    prefill_section,
    prefix_cache_section,
    threads_section,
)

AVX2 = {"cpu_flags": ["avx", "avx2", "fma"], "logical_cpus": 2}
LOAD = {"load_average": 1.5, "usable_cpus": 2}


def prefill_rows(int4_best: float) -> list[dict]:
    """onnx-int4 and onnx-int8 at 100 tokens/s before; int4's last-position two-thread case at `int4_best`."""
    rows = []
    for variant, best in (("onnx-int4", int4_best), ("onnx-int8", 150.0)):
        for logits, threads, speed, per_cpu in (("every position", 1, 100.0, 100.0), ("last position", 1, 125.0, 125.0),
                                                ("every position", 2, 140.0, 70.0), ("last position", 2, best, 90.0)):
            rows.append({"variant": variant, "logits": logits, "threads": threads, "tokens": 512,
                         "tokens_per_s": speed, "tokens_per_cpu_s": per_cpu, "repeats": 3, **LOAD})
    return rows


def text(lines: list[str]) -> str:
    return "\n".join(lines)


@pytest.mark.parametrize(("best", "verdict"), [(210.0, "meets"), (180.0, "misses")])
def test_the_prefill_target_follows_the_figures(best, verdict):
    markdown = text(prefill_section(prefill_rows(best), AVX2))
    assert f"onnx-int4: {best / 100:.2f}x before with the last position only and 2 threads ({verdict}" in markdown
    assert "onnx-int8: 1.50x before" in markdown and "misses" in markdown.split("onnx-int8:")[1]
    assert "the lm_head over every position was 20 % of the CPU work" in markdown  # 1 - 100/125
    assert "AVX2 and FMA, no AVX-512" in markdown and "load average 1.5 on 2 usable CPUs" in markdown


def test_the_threads_verdict_names_the_faster_setting_per_level():
    rows = [{"variant": "onnx-int4", "threads": t, "streams": n, "tokens_per_s": s, "repeats": 1, **LOAD}
            for t, n, s in ((1, 1, 50.0), (2, 1, 40.0), (1, 4, 100.0), (2, 4, 120.0))]
    markdown = text(threads_section(rows, AVX2))
    assert "two threads are faster at 4 streams only" in markdown
    assert "| 4 | 100.0 | 120.0 | 1.20 |" in markdown


def long_rows(chunked_p99: float) -> list[dict]:
    figures = {("chunked", "streams alone"): (30.0, None), ("chunked", "long prompt arrives"): (chunked_p99, 20.0),
               ("whole", "streams alone"): (30.0, None), ("whole", "long prompt arrives"): (9000.0, 8.0)}
    return [{"variant": "onnx-int4", "prefill": mode, "case": case, "streams": 4, "long_tokens": 2000,
             "itl_p99_ms": p99, "itl_p50_ms": p99 / 2, "samples": 100, "long_ttft_s": ttft, "repeats": 3}
            for (mode, case), (p99, ttft) in figures.items()]


@pytest.mark.parametrize(("p99", "verdict"), [(54.0, "meets the target (≤ 2x)"), (75.0, "misses the target (≤ 2x)")])
def test_the_long_prompt_target_follows_the_figures(p99, verdict):
    markdown = text(long_prompt_section(long_rows(p99)))
    assert f"p99 rises {p99 / 30:.2f}x ({verdict})" in markdown
    assert "with each prompt whole it rises 300.0x" in markdown and "2.50x later" in markdown


def test_the_prefix_cache_ratio_is_first_over_sharing():
    def row(cache, request, ttft, cached):
        return {"variant": "onnx-int4", "cache": cache, "request": request, "prefix_tokens": 1000, "repeats": 3,
                "ttft_s": ttft, "queue_s": 0.001, "prefill_s": ttft - 0.002, "first_sample_s": 0.0003,
                "cached_tokens": cached, "prompt_tokens": 1006}
    rows = [row("on", "first", 4.0, 0), row("on", "sharing", 0.2, 1000), row("off", "first", 4.0, 0),
            row("off", "sharing", 4.1, 0)]
    markdown = text(prefix_cache_section(rows))
    assert "20.0x sooner than the first (meets the target (≥ 5x)); with it off, 0.98x" in markdown
    assert "1000 of 1006" in markdown


@pytest.mark.parametrize(("cached_ttft", "claim"), [(0.05, "(2.00x sooner)."), (0.09, "barely shorten it")])
def test_short_chat_requests_say_what_the_template_prefix_saved(cached_ttft, claim):
    def row(prompt, cache, request, ttft, cached, tokens):
        return {"variant": "onnx-int4", "prompt": prompt, "cache": cache, "request": request, "prefix_tokens": 1000,
                "repeats": 3, "ttft_s": ttft, "queue_s": 0.0, "prefill_s": ttft, "first_sample_s": 0.0003,
                "cached_tokens": cached, "prompt_tokens": tokens}
    long = "1000-token prefix"
    rows = [row(long, "on", "first", 4.0, 0, 1006), row(long, "on", "sharing", 0.2, 1000, 1006),
            row(long, "off", "first", 4.0, 0, 1006), row(long, "off", "sharing", 4.0, 0, 1006),
            row("short chat", "on", "first", 0.1, 0, 40), row("short chat", "on", "sharing", cached_ttft, 30, 38),
            row("short chat", "off", "first", 0.1, 0, 40), row("short chat", "off", "sharing", 0.1, 0, 38)]
    markdown = text(prefix_cache_section(rows))
    assert "20.0x sooner than the first" in markdown and "| short chat | on | sharing |" in markdown
    assert f"A short chat request reuses 30 of its 38 prompt tokens (the template's system prompt) and reaches its " \
           f"first token in {cached_ttft * 1000:.0f} ms against 100 ms with the cache off" in markdown
    assert claim in markdown


def test_a_busy_machine_is_said_only_when_its_load_exceeded_its_cpus():
    quiet = text(threads_section([{"variant": "onnx-int4", "threads": t, "streams": 1, "tokens_per_s": 50.0,
                                   "repeats": 1, **LOAD} for t in (1, 2)], AVX2))
    busy = text(threads_section([{"variant": "onnx-int4", "threads": t, "streams": 1, "tokens_per_s": 50.0,
                                  "repeats": 1, "load_average": 27.5, "usable_cpus": 2} for t in (1, 2)], AVX2))
    assert "busy" not in quiet
    assert "The machine was busy while this ran (load average 27.5 on 2 usable CPUs)" in busy
