"""Render a report from per-request records built here, then check that its files agree with each other
and that the HTML draws in headless Chromium."""

from __future__ import annotations

import csv
import json
import random
import shutil
import subprocess
from collections import defaultdict

import pytest
from PIL import Image, ImageStat

from loadtest.cost import Slo
from loadtest.records import RequestRecord
from loadtest.report import FILES, write_report
from loadtest.results import VariantCost, build_results

COSTS = {"onnx-int4": VariantCost("onnx-int4", "cpu-2vcpu", 1, 0.08925),
         "onnx-fp32": VariantCost("onnx-fp32", "cpu-4vcpu", 2, 0.357)}
SLO = Slo(ttft_ms=300, itl_ms=40)
SPEED = {"onnx-int4": 1.0, "onnx-fp32": 2.5}  # fp32 is slower: latency multiplier


def synthetic_records(seed: int = 7) -> list[RequestRecord]:
    rng, records = random.Random(seed), []
    for label, slow in SPEED.items():
        clock = 1_800_000_000.0
        for level in (1, 2, 4):
            for index in range(40):
                records.append(_record(rng, label, level, slow, clock, "warmup" if index < 5 else "measure"))
                clock += 0.25 * slow / level
    records[12].ok, records[12].error, records[12].status = False, "HTTP 503: queue full (overloaded)", 503
    records[90].ok, records[90].error, records[90].status = False, "stream ended before [DONE]", 200
    return records


def _record(rng, label, level, slow, clock, phase) -> RequestRecord:
    output = rng.randint(8, 64)
    ttft = rng.uniform(50, 150) * slow * (1 + level / 4)
    itl = rng.uniform(10, 20) * slow
    e2e = ttft + itl * (output - 1)
    return RequestRecord(start_s=clock, end_s=clock + e2e / 1000, model=f"smollm2-135m:{label}", variant=label,
                         run_label=label, level=level, phase=phase, prompt_id="short-01", max_tokens=64, status=200,
                         ok=True, ttft_ms=ttft, itl_ms=itl, itl_max_ms=itl * 2, e2e_ms=e2e, prompt_tokens=20,
                         output_tokens=output, total_tokens=20 + output, chunks=output, finish_reason="length",
                         usage_checked=True)


def meta() -> dict:
    config = {"target": "http://127.0.0.1:8000", "model": "smollm2-135m", "model_ids": [], "endpoint": "chat",
              "mode": "users", "levels": [1, 2, 4], "warmup_s": 5, "step_s": 30, "prompts": "short",
              "max_tokens": "64"}
    return {"run_id": "synthetic", "status": "complete", "error": "", "config": config, "versions": {},
            "machine": {"cpu": "test", "logical_cpus": 2}, "server": {}}


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    records = synthetic_records()
    write_report(folder, build_results(meta(), records, COSTS, SLO, attainment=0.9), records)
    return folder


def read_csv_rows(folder) -> list[dict]:
    with (folder / "requests.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_all_report_files_are_written(report_dir):
    for name in FILES:
        assert (report_dir / name).stat().st_size > 0, name


def test_token_totals_equal_the_sum_of_the_raw_records(report_dir):
    results = json.loads((report_dir / "results.json").read_text())
    rows = read_csv_rows(report_dir)
    counted = [row for row in rows if row["phase"] == "measure" and row["ok"] == "True"]
    assert len(rows) == results["totals"]["requests"] == 240
    for name in ("prompt_tokens", "output_tokens", "total_tokens"):
        assert results["totals"][name] == sum(int(row[name]) for row in counted)
    per_group = defaultdict(int)
    for row in counted:
        per_group[(row["run_label"], float(row["level"]))] += int(row["output_tokens"])
    assert {(s["label"], s["level"]): s["output_tokens"] for s in results["summaries"]} == per_group


def test_cost_per_million_follows_price_and_measured_throughput(report_dir):
    results = json.loads((report_dir / "results.json").read_text())
    rows = read_csv_rows(report_dir)
    for s in results["summaries"]:
        group = [r for r in rows if r["run_label"] == s["label"] and float(r["level"]) == s["level"]
                 and r["phase"] == "measure"]
        window = max(float(r["end_s"]) for r in group) - min(float(r["start_s"]) for r in group)
        assert s["window_s"] == pytest.approx(window)
        assert s["output_tokens_per_s"] == pytest.approx(s["output_tokens"] / window)
        usd_per_hour = COSTS[s["label"]].usd_per_hour
        assert s["usd_per_hour"] == usd_per_hour
        assert s["usd_per_m_output_tokens"] == pytest.approx(usd_per_hour / (s["output_tokens"] / window * 3600) * 1e6)
        assert s["usd_per_m_total_tokens"] == pytest.approx(usd_per_hour / (s["total_tokens"] / window * 3600) * 1e6)


def test_errors_are_counted_and_shown(report_dir):
    results = json.loads((report_dir / "results.json").read_text())
    assert results["totals"]["errors"] == 2
    assert results["errors"] == {"HTTP 503: queue full (overloaded)": 1, "stream ended before [DONE]": 1}
    assert sum(s["errors"] for s in results["summaries"]) == 2  # both fell in measured phases
    markdown, page = (report_dir / "report.md").read_text(), (report_dir / "report.html").read_text()
    assert "queue full (overloaded)" in markdown and "queue full (overloaded)" in page


def test_cheapest_variant_meeting_the_slo_is_named_consistently(report_dir):
    results = json.loads((report_dir / "results.json").read_text())
    cheapest = results["cheapest_meeting_slo"]
    meeting = [s for s in results["summaries"] if s["errors"] == 0 and s["slo_attainment"] >= 0.9]
    best = min(meeting, key=lambda s: s["usd_per_m_output_tokens"])
    assert (cheapest["overall"], cheapest["overall_level"]) == (best["label"], best["level"])
    assert any(s["pareto"] for s in results["summaries"])
    row = next(line for line in (report_dir / "report.md").read_text().splitlines() if line.endswith("cheapest |"))
    assert row.startswith(f"| {best['label']} | {best['level']:g} users |")


def test_html_is_self_contained_with_three_plots(report_dir):
    page = (report_dir / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3
    assert "http://" not in page.replace("http://127.0.0.1:8000", "")  # nothing fetched from elsewhere


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_html_renders_in_headless_chromium_with_its_plots(report_dir, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.fail("chromium is not installed; `make test` installs it (apt-get install -y chromium)")
    shot = tmp_path / "report.png"
    command = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1400,2400",
               f"--screenshot={shot}", (report_dir / "report.html").as_uri()]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    image = Image.open(shot).convert("RGB")
    assert image.size == (1400, 2400)
    assert max(ImageStat.Stat(image.convert("L")).var[0], 0) > 500  # far from a blank page
    colored = sum(1 for r, g, b in image.getdata() if max(r, g, b) - min(r, g, b) > 80)
    assert colored > 2000, f"only {colored} colored pixels: the plots did not draw"
