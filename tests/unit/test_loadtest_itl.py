"""Inter-token latency from every gap of a recorded stream, against gaps known in advance.

`tests/data/loadtest/stream_known_gaps.jsonl` holds three chat-completion streams as a client receives them: each
line is (request, arrival time in seconds since the request was due, raw SSE line), role chunk, content chunks,
usage chunk and `[DONE]` included. The content chunks arrive at exactly the gaps below, so the expected figures are
computed here with numpy from those gaps alone, apart from the code under test.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from loadtest.cost import Slo
from loadtest.measure import measure_stream
from loadtest.records import RequestRecord
from loadtest.report import render_markdown
from loadtest.results import VariantCost, build_results
from loadtest.sse import parse_stream
from loadtest.tables import latency_cell

STREAMS = Path(__file__).parents[1] / "data" / "loadtest" / "stream_known_gaps.jsonl"
KNOWN_GAPS_MS = {"a": [20.0] * 30 + [60.0] * 8 + [250.0], "b": [20.0] * 19, "c": [100.0] * 10}
FIRST_TOKEN_MS = {"a": 180.0, "b": 95.0, "c": 410.0}
LABEL = "onnx-int4"


def recorded_streams() -> dict[str, list[tuple[float, str]]]:
    streams: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for line in STREAMS.read_text().splitlines():
        item = json.loads(line)
        streams[item["request"]].append((item["t"], item["line"]))
    return streams


def records_from_recording() -> list[RequestRecord]:
    records = []
    for request, lines in recorded_streams().items():
        tokens = len(KNOWN_GAPS_MS[request]) + 1
        record = RequestRecord(model=f"m:{LABEL}", run_label=LABEL, mode="rate", level=1.0, max_tokens=tokens,
                               prompt_id=request, start_s=100.0, end_s=101.0, status=200)
        measure_stream(record, parse_stream(lines), due_s=0.0)  # the recording's clock starts when it was due
        records.append(record)
    return records


def step_figures(records: list[RequestRecord]) -> dict:
    costs = {LABEL: VariantCost(LABEL, "cpu-2vcpu", 1, 0.08925)}
    results = build_results({"run_id": "recorded"}, records, costs, Slo(), attainment=0.9)
    (step,) = results["summaries"]
    return step


def test_each_request_keeps_every_gap_and_its_own_tpot():
    for record in records_from_recording():
        gaps = KNOWN_GAPS_MS[record.prompt_id]
        assert record.ok, record.error
        assert record.token_gaps_ms == pytest.approx(gaps, abs=0.01)
        assert record.tpot_ms == pytest.approx(np.mean(gaps), abs=0.01)
        assert record.ttft_ms == pytest.approx(FIRST_TOKEN_MS[record.prompt_id], abs=0.01)
        assert record.itl_max_ms == pytest.approx(max(gaps), abs=0.01)


def test_itl_percentiles_pool_every_gap_of_the_step():
    step = step_figures(records_from_recording())
    every_gap = [gap for gaps in KNOWN_GAPS_MS.values() for gap in gaps]
    assert step["itl_gaps"] == len(every_gap) == 68
    for q in (50, 90, 99):
        assert step["itl_ms"][f"p{q}"] == pytest.approx(np.percentile(every_gap, q), abs=0.01), q
    assert step["itl_ms"]["mean"] == pytest.approx(np.mean(every_gap), abs=0.01)
    # The tail lives in request a: 8 gaps of 60 ms and one of 250 ms among 68.
    assert step["itl_ms"]["p50"] == pytest.approx(20.0, abs=0.01) and step["itl_ms"]["p99"] > 60


def test_tpot_is_one_value_per_request_not_per_gap():
    step = step_figures(records_from_recording())
    per_request = [np.mean(gaps) for gaps in KNOWN_GAPS_MS.values()]
    for q in (50, 90, 99):
        assert step["tpot_ms"][f"p{q}"] == pytest.approx(np.percentile(per_request, q), abs=0.01), q
    assert step["tpot_ms"]["mean"] == pytest.approx(np.mean(per_request), abs=0.01)
    # Request c's slow 100 ms gaps weigh a third of TPOT but only 10 of 68 gaps in ITL.
    assert step["tpot_ms"]["p50"] > step["itl_ms"]["p50"]


def test_the_report_shows_all_four_statistics():
    records = records_from_recording()
    costs = {LABEL: VariantCost(LABEL, "cpu-2vcpu", 1, 0.08925)}
    meta = {"run_id": "recorded", "status": "complete", "config": {
        "target": "http://127.0.0.1:1", "model": "m", "mode": "rate", "levels": [1.0], "warmup_s": 0, "step_s": 1,
        "prompts": "recorded", "max_tokens": "40", "arrivals": "poisson"}}
    results = build_results(meta, records, costs, Slo(), attainment=0.9)
    markdown = render_markdown(results, [])
    step = results["summaries"][0]
    for name in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms"):
        assert latency_cell(step[name]) in markdown, name
    assert f"| {LABEL} | 1 req/s |" in markdown
