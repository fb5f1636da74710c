"""Render a report from per-request records built here and check that its files agree with each other."""

from __future__ import annotations

import csv
import json
from collections import defaultdict

import pytest

from loadtest.report import FILES
from tests.helpers.report_records import COSTS, write_synthetic_report


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    return write_synthetic_report(tmp_path_factory.mktemp("report"))


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
