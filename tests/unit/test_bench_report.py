"""BENCHMARKS.md says only what the run recorded: machine sentences follow its CPU flags, comparisons its figures."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from loadtest.bench.report import render_markdown
from loadtest.machine import cpu_flags

RECORDED = json.loads((Path(__file__).parents[2] / "bench" / "results.json").read_text())
AVX2_ONLY = ["avx", "avx2", "f16c", "fma", "sse4_1", "sse4_2"]
AVX512_BF16 = [*AVX2_ONLY, "avx512bw", "avx512f", "avx512_bf16", "avx512_vnni"]


def recorded(flags: list[str] | None, **changes) -> dict:
    results = copy.deepcopy(RECORDED)
    results["machine"]["cpu_flags"] = flags
    results["machine"].update(changes)
    return results


def paragraph(markdown: str, heading: str) -> str:
    """The last paragraph of the section whose heading starts with `heading`."""
    section = markdown.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return section.strip().split("\n\n")[-1]


def test_the_bf16_sentence_follows_the_recorded_cpu_flags():
    avx2 = render_markdown(recorded(AVX2_ONLY))
    avx512 = render_markdown(recorded(AVX512_BF16))
    assert "AVX2 and FMA, no AVX-512" in avx2.splitlines()[2]
    assert "AVX-512 (BF16, VNNI)" in avx512.splitlines()[2]
    vllm_on_avx2, vllm_on_avx512 = paragraph(avx2, "4."), paragraph(avx512, "4.")
    assert "this CPU has no bf16 arithmetic" in vllm_on_avx2
    assert "bf16 saves bytes read, not multiply work" in vllm_on_avx2
    assert "this CPU has bf16 arithmetic (avx512_bf16)" in vllm_on_avx512
    assert "no bf16 arithmetic" not in vllm_on_avx512


def test_without_recorded_flags_the_report_makes_no_claim_about_them():
    text = render_markdown(recorded(None))
    assert "the run recorded no CPU flags, so it is not known" in paragraph(text, "4.")
    assert "this CPU has bf16 arithmetic (" not in text and "this CPU has no bf16 arithmetic" not in text
    assert "instruction sets not recorded" in text.splitlines()[2]


def test_machine_sentences_use_the_recorded_cpu_count():
    text = render_markdown(recorded(AVX2_ONLY, logical_cpus=16))
    assert "(16 logical CPUs," in text.splitlines()[2]
    assert "this machine's 16 logical CPUs with the replica" in text.split("## 1.", 1)[1].split("\n## ", 1)[0]
    assert "two cores" not in text


def test_comparisons_follow_the_measured_figures():
    results = recorded(AVX2_ONLY)
    assert "bound by the server, not by the client" in paragraph(render_markdown(results), "6.")
    results["sweep_max_requests_per_s"] = max(r["requests_per_s"] for r in results["headroom"]) * 0.8
    assert "may be partly bound by the client" in paragraph(render_markdown(results), "6.")
    results["sweep_max_requests_per_s"] *= 2
    assert "the load test ran at the client's own limit" in paragraph(render_markdown(results), "6.")

    ceiling = {r["variant"]: r for r in results["ceiling"]}
    assert "rather than by reading them" in paragraph(render_markdown(results), "3.")
    ceiling["onnx-int4"]["fraction_of_ceiling"] = ceiling["onnx-int8"]["fraction_of_ceiling"] + 0.05
    assert "rather than by reading them" not in paragraph(render_markdown(results), "3.")


def test_one_price_per_replica_hour_is_said_only_when_the_figures_show_it():
    results = recorded(AVX2_ONLY)
    assert "every variant costs the same" in paragraph(render_markdown(results), "5.")
    results["variants"][0]["usd_per_m_output_tokens"] *= 3
    assert "prices per replica-hour differ" in paragraph(render_markdown(results), "5.")


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [
        ("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile\n\nflags\t: x",
         ["amx_bf16", "amx_tile", "avx", "avx2", "avx512_bf16", "avx512f", "fma", "sse4_2"]),
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", ["asimd", "bf16", "i8mm", "sve"]),
        ("processor\t: 0\n", None),
    ],
)
def test_cpu_flags_keep_the_vector_instruction_sets(cpuinfo, expected):
    assert cpu_flags(cpuinfo) == expected


def test_variants_show_the_perplexity_change_in_percent_and_point_to_the_fidelity_frontier():
    results = recorded(AVX2_ONLY)
    results["variants"][0]["perplexity_delta_pct"] = 28.46
    section = render_markdown(results).split("## 5.", 1)[1].split("\n## ", 1)[0]
    assert f"| {results['variants'][0]['variant']} " in section and "| +28.5 % |" in section
    assert "quantize/FIDELITY.md" in section and "quantize/fidelity_frontier.png" in section


def test_a_section_from_a_later_run_says_its_own_date_and_machine():
    results = recorded(None)
    results["runs"] = {"prefill": {"date": "2026-12-02T09:00:00", "machine": {**results["machine"],
                                                                             "cpu_flags": AVX512_BF16}}}
    markdown = render_markdown(results)
    assert "instruction sets not recorded" in markdown.splitlines()[2]  # the run the file is named for
    prefill = markdown.split("## 8.", 1)[1].split("\n## ", 1)[0]
    assert "Measured 2026-12-02T09:00:00" in prefill and "AVX-512 (BF16, VNNI)" in prefill
