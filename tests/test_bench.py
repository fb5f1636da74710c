"""`make bench --quick`: the benchmark script runs on the real variants and writes figures that make sense."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_quick_bench_writes_consistent_ratios(built_models, tmp_path):
    command = [sys.executable, "-m", "loadtest.bench", "--quick", "--models-dir", str(built_models),
               "--output", str(tmp_path), "--markdown", str(tmp_path / "BENCHMARKS.md")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {row["variant"] for row in results["ceiling"]} == {"onnx-fp32", "onnx-int8", "onnx-int4", "gptq-int4"}
    for row in results["ceiling"]:
        assert row["fraction_of_ceiling"] == pytest.approx(row["tokens_per_s"] / row["ceiling_tokens_per_s"])
        assert 0 < row["fraction_of_ceiling"] < 2  # above the ceiling would mean the model is not being read
    smallest = min(results["ceiling"], key=lambda row: row["weight_mb"])
    assert smallest["ceiling_tokens_per_s"] == max(row["ceiling_tokens_per_s"] for row in results["ceiling"])
    [one, *more] = results["batching"]
    assert one["scaling_vs_1_stream"] == 1.0 and all(row["tokens_per_s"] > 0 for row in more)
    assert "| onnx-int4 |" in (tmp_path / "BENCHMARKS.md").read_text()
