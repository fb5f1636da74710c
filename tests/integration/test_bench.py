"""`make bench --quick`: every benchmark section runs on the real variants and the real application and writes
figures that agree with each other (ratios equal to their parts, shares that add up)."""

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_bench(built_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    command = [sys.executable, "-m", "quantserve.cli", "bench", "--quick", "--models-dir", str(built_models),
               "--output", str(folder), "--markdown", str(folder / "BENCHMARKS.md")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((folder / "results.json").read_text()), (folder / "BENCHMARKS.md").read_text()


def test_ceiling_and_profile(quick_bench):
    results, _ = quick_bench
    assert {row["variant"] for row in results["ceiling"]} == {"onnx-fp32", "onnx-int8", "onnx-int4", "gptq-int4"}
    for row in results["ceiling"]:
        assert row["fraction_of_ceiling"] == pytest.approx(row["tokens_per_s"] / row["ceiling_tokens_per_s"])
        assert 0 < row["fraction_of_ceiling"] < 2  # above the ceiling would mean the model is not being read
        assert 0 < row["share_in_onnxruntime"] <= 1
    smallest = min(results["ceiling"], key=lambda row: row["weight_mb"])
    assert smallest["ceiling_tokens_per_s"] == max(row["ceiling_tokens_per_s"] for row in results["ceiling"])
    assert sum(op["share"] for op in results["profile"]) == pytest.approx(1.0)
    assert "MatMulNBits" in {op["op"] for op in results["profile"]}


def test_batching_and_backends(quick_bench):
    results, _ = quick_bench
    [one, *more] = results["batching"]
    assert one["scaling_vs_1_stream"] == 1.0 and all(row["tokens_per_s"] > 0 for row in more)
    assert {row["vllm"] for row in results["backends"]} == {"vllm fp32"}
    for row in results["backends"]:
        assert row["onnx_over_vllm_tokens_per_s"] == pytest.approx(row["onnx_tokens_per_s"] / row["vllm_tokens_per_s"])
        assert row["vllm_over_onnx_ttft"] == pytest.approx(row["vllm_ttft_ms"] / row["onnx_ttft_ms"])


def test_router_overhead(quick_bench):
    results, markdown = quick_bench
    [row] = results["router"]
    assert row["added_p50_ms"] == pytest.approx(row["routed_p50_ms"] - row["direct_p50_ms"])
    assert row["throughput_ratio"] == pytest.approx(row["routed_rps"] / row["direct_rps"])
    assert row["direct_p50_ms"] > 0 and row["health_p50_ms"] > 0 and row["itl_ratio"] > 0
    assert [level["clients"] for level in row["throughput"]] == [8, 32]
    for level in row["throughput"]:
        assert level["ratio"] == pytest.approx(level["routed_rps"] / level["direct_rps"])
    # the router's CPU was read from its own process: the streams carried tokens and it did work for them
    cpu = row["cpu"]
    assert cpu["tokens"] > 0 and cpu["router_gross_us_per_token"] > 0 and cpu["router_us_per_token"] is not None
    assert "Issue 17's targets" in markdown


def test_variants_and_headroom(quick_bench):
    results, markdown = quick_bench
    [int4] = [row for row in results["variants"] if row["variant"] == "onnx-int4"]
    assert int4["usd_per_m_output_tokens"] > 0 and 0.2 < int4["size_vs_fp16"] < 0.5
    assert all(row["requests_per_s"] > 0 and row["errors"] == 0 for row in results["headroom"])
    for section in range(1, 7):
        assert f"## {section}. " in markdown


def test_prompt_sections(quick_bench):
    results, markdown = quick_bench
    assert {row["variant"] for row in results["prefill"]} == {"onnx-fp32", "onnx-int8", "onnx-int4", "gptq-int4"}
    assert all(row["tokens_per_s"] > 0 and row["tokens_per_cpu_s"] > 0 for row in results["prefill"])
    assert {(row["threads"], row["streams"]) for row in results["threads"]} == {(1, 1), (2, 1)}
    by = {(row["prefill"], row["case"]): row for row in results["long_prompt"]}
    assert by[("whole", "long prompt arrives")]["long_ttft_s"] > 0 and by[("chunked", "streams alone")]["samples"] > 0
    hits = {row["prompt"]: row for row in results["prefix_cache"]
            if row["cache"] == "on" and row["request"] == "sharing"}
    prefix = results["plan"]["prefix_tokens"]
    assert hits[f"{prefix}-token prefix"]["cached_tokens"] > 0.9 * prefix
    assert 0 < hits["short chat"]["cached_tokens"] < hits["short chat"]["prompt_tokens"]  # the system prompt only
    assert all(row["cached_tokens"] == 0 for row in results["prefix_cache"] if row["request"] == "first")
    for heading in ("Prefill of a", "Intra-op threads", "prompt arriving beside", "Prefix cache"):
        assert heading in markdown


def test_sampling_and_engine_profiles(quick_bench):
    results, markdown = quick_bench
    greedy = {row["streams"]: row["tokens_per_s"] for row in results["sampling"] if row["mode"] == "greedy"}
    assert {(row["mode"], row["streams"]) for row in results["sampling"]} == {
        (mode, streams) for mode in ("greedy", "temperature 1", "temperature 0.7, top_p 0.9") for streams in (1, 2)}
    for row in results["sampling"]:
        assert row["x_greedy"] == pytest.approx(row["tokens_per_s"] / greedy[row["streams"]])
        assert 0 < row["sampler_ms"] < row["step_ms"]  # the sampler alone is part of a step, never all of it
    assert set(results["batching_profile"]) == {"1", "2"}
    assert set(results["prefill_profile"]) == {"onnx-fp32", "onnx-int8", "onnx-int4"}
    for ops in [*results["batching_profile"].values(), *results["prefill_profile"].values()]:
        assert sum(op["share"] for op in ops) == pytest.approx(1.0)
    assert "MatMulNBits" in {op["op"] for op in results["prefill_profile"]["onnx-int4"]}
    assert "## 12. Sampling at the OpenAI default temperature" in markdown and "Profile of one" in markdown
