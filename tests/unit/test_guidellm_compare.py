"""loadtest/guidellm_compare.py without guidellm or a server: the guidellm command line, the reading of its JSON
report and the side-by-side rows, and the config that serves only the measured variant.

`tests/data/loadtest/guidellm-0.8.1-report.json` is the report of the README's comparison run
(`loadtest/compare_guidellm.sh`, guidellm 0.8.1 against smollm2-135m:onnx-int4), trimmed to what the comparison reads:
its layout (`benchmarks[0].metrics.NAME.successful.{mean, median, percentiles}`) is guidellm's, the per-request
samples and distributions are left out. The expected figures below are that run's (0.5 req/s, 5 s + 40 s).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml

from loadtest.guidellm_compare import (
    ROWS,
    comparison_rows,
    guidellm_command,
    guidellm_value,
    read_guidellm,
    serve_config,
)
from tests.helpers import REPO

REPORT = Path(__file__).parents[1] / "data" / "loadtest" / "guidellm-0.8.1-report.json"
TTFT_MEDIAN_MS, TTFT_P90_MS = 594.133, 745.255
ITL_MEAN_MS = 18.85976
E2E_MEDIAN_S = 1.1966946
ARGS = argparse.Namespace(guidellm="/venv/bin/guidellm", model="smollm2-135m:onnx-int4", rate=1.0, warmup=5.0,
                          duration=30.0, input_tokens=128, output_tokens=32, tokenizer_dir="models/smollm2-135m/base")


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_command_asks_for_the_same_workload_and_drops_only_continuous_usage_stats(tmp_path):
    command = guidellm_command(ARGS, "http://127.0.0.1:8123", tmp_path / "out.json")
    assert command[:2] == ["/venv/bin/guidellm", "run"]
    backend = json.loads(option(command, "--backend"))
    assert backend["target"] == "http://127.0.0.1:8123" and backend["model"] == "smollm2-135m:onnx-int4"
    # guidellm deep-merges extras into its body and then drops None values: include_usage stays
    assert backend["extras"] == {"body": {"stream_options": {"continuous_usage_stats": None}}}
    assert option(command, "--profile") == "kind=constant,rate=1,warmup=5"
    assert option(command, "--constraint") == "kind=max_duration,seconds=35"
    assert option(command, "--data") == "kind=synthetic_text,prompt_tokens=128,output_tokens=32"
    assert option(command, "--output") == f"kind=json,path={tmp_path / 'out.json'}"
    assert option(command, "--tokenizer").startswith("kind=huggingface_auto,model=/")  # absolute: runs elsewhere


def test_reads_the_recorded_report():
    benchmark = read_guidellm(REPORT)
    assert guidellm_value(benchmark, "time_to_first_token_ms", "median") == pytest.approx(TTFT_MEDIAN_MS, abs=1e-3)
    assert guidellm_value(benchmark, "time_to_first_token_ms", "p90") == pytest.approx(TTFT_P90_MS, abs=1e-3)
    assert guidellm_value(benchmark, "inter_token_latency_ms", "mean") == pytest.approx(ITL_MEAN_MS, abs=1e-5)
    # request_latency is in seconds in guidellm's report, ms in the comparison
    assert guidellm_value(benchmark, "request_latency", "median") == pytest.approx(E2E_MEDIAN_S * 1000, abs=1e-3)
    assert benchmark["metrics"]["request_totals"]["errored"] == 0


@pytest.mark.parametrize("benchmarks", [[], [{"metrics": {}}, {"metrics": {}}], [{"config": {}}]])
def test_refuses_a_report_without_exactly_one_benchmark(tmp_path, benchmarks):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"benchmarks": benchmarks}))
    with pytest.raises(ValueError, match="expected one benchmark"):
        read_guidellm(path)


def summary(scale: float) -> dict:
    figures = {"p50": 100.0 * scale, "p90": 200.0 * scale, "p99": 300.0 * scale, "mean": 120.0 * scale}
    return {name: dict(figures) for name, _ in (ours for _, ours, _ in ROWS)}


def test_rows_put_each_figure_beside_guidellm_and_the_differences():
    benchmark = read_guidellm(REPORT)
    rows = comparison_rows(summary(1.0), benchmark, summary(1.1))
    assert [row[0] for row in rows] == [name for name, _, _ in ROWS]
    ttft_p90 = rows[1]
    assert ttft_p90[:4] == ["TTFT from send, p90 ms", "200.0", f"{TTFT_P90_MS:.1f}", "220.0"]
    assert ttft_p90[4] == f"{(200.0 / TTFT_P90_MS - 1) * 100:+.1f} %"
    assert ttft_p90[6] == "+10.0 %"  # after against before


def test_serve_config_enables_only_the_measured_variant(tmp_path):
    path = serve_config(REPO / "quantserve.yaml", "smollm2-135m:onnx-int4", tmp_path)
    (model,) = yaml.safe_load(path.read_text())["models"]
    assert model["name"] == "smollm2-135m"
    assert {v["name"]: v["serve"]["enabled"] for v in model["variants"]}["onnx-int4"] is True
    assert sum(v["serve"]["enabled"] for v in model["variants"]) == 1
    with pytest.raises(SystemExit, match="no variant"):
        serve_config(REPO / "quantserve.yaml", "smollm2-135m:nope", tmp_path)
