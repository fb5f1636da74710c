"""Open-loop load above capacity: a deliberately slow endpoint on 127.0.0.1 (tests/helpers/slow_sse.py), a real
`quantserve loadtest run` with its Locust process, and a client cap of 2 requests in flight. Requests that wait for a
free client are sent late; their latency counts from when they were due, so the queue shows, and the report says
that fewer requests were achieved than offered."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from loadtest.records import read_records
from tests.helpers import REPO, run_quantserve
from tests.helpers.slow_sse import MODEL, Pace, slow_server

PACE = Pace(first_token_s=0.05, token_gap_s=0.02)
TOKENS = 8
CAP = 2
OFFERED_RPS = 25.0  # capacity: CAP / PACE.service_s(TOKENS) = 2 / 0.19 s ≈ 10.5 requests/s


@pytest.fixture(scope="module")
def overloaded_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open-loop")
    with slow_server(PACE) as url:
        done = run_quantserve("loadtest", "run", "--target", url, "--model", MODEL, "--rate", f"{OFFERED_RPS:g}",
                              "--arrivals", "constant", "--rate-users", str(CAP), "--warmup", "1s",
                              "--duration", "4s", "--max-tokens", str(TOKENS), "--max-requests", "400",
                              "--hardware-profile", "cpu-2vcpu", "--reports-dir", str(folder), "--run-id", "slow",
                              timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return folder / "slow"


def measured_records(folder):
    records = [r for r in read_records(folder / "requests.csv") if r.phase == "measure" and r.ok]
    return sorted(records, key=lambda r: r.scheduled_s)


def test_offered_above_capacity_is_reported_as_offered_not_achieved(overloaded_run):
    results = json.loads((overloaded_run / "results.json").read_text())
    (step,) = results["summaries"]
    capacity = CAP / PACE.service_s(TOKENS)
    assert step["offered_rps"] == pytest.approx(OFFERED_RPS, rel=0.05)
    assert step["achieved_rps"] < 0.7 * step["offered_rps"]
    assert 0.3 * capacity < step["achieved_rps"] < 1.35 * capacity  # below it when the machine is busy
    assert step["cap_hits"] > 0 and step["rate_users"] == CAP
    row = next(line for line in (overloaded_run / "report.md").read_text().splitlines()
               if line.startswith(f"| {MODEL} | 25 req/s constant | {step['requests']} |"))
    assert f"| {step['offered_rps']:.2f} | {step['achieved_rps']:.2f} |" in row and f"(cap {CAP})" in row


def test_latency_counts_from_the_schedule_so_the_queue_shows(overloaded_run):
    records = measured_records(overloaded_run)
    assert len(records) >= 10
    due = [r.scheduled_s - records[0].scheduled_s for r in records]
    # Sent later and later behind schedule: with the client serving at most `capacity` of the offered rate, the lag
    # grows by about 1 - capacity / offered (0.58) seconds per second of schedule; well above zero in any case.
    lag_slope = statistics.linear_regression(due, [r.lag_ms / 1000 for r in records]).slope
    assert lag_slope > 0.3
    third = len(records) // 3
    assert all(r.waited_for_user for r in records[-third:])
    # TTFT from the schedule carries the lag; from the send it stays what the server takes (50 ms, plus noise).
    from_send = [r.ttft_ms - r.lag_ms for r in records]
    assert max(from_send) < 10 * PACE.first_token_s * 1000
    assert statistics.linear_regression(due, [r.ttft_ms / 1000 for r in records]).slope > 0.3
    assert abs(statistics.linear_regression(due, [ms / 1000 for ms in from_send]).slope) < 0.1
    for record in records:
        assert record.scheduled_s <= record.start_s and record.ttft_ms >= record.lag_ms


def test_itl_and_tpot_follow_the_servers_pace(overloaded_run):
    results = json.loads((overloaded_run / "results.json").read_text())
    (step,) = results["summaries"]
    gap_ms = PACE.token_gap_s * 1000
    assert step["itl_gaps"] == (TOKENS - 1) * len(measured_records(overloaded_run))
    assert gap_ms <= step["itl_ms"]["p50"] < 2 * gap_ms
    assert gap_ms <= step["tpot_ms"]["mean"] < 2 * gap_ms
    assert step["output_len"] == {"min": TOKENS, "mean": TOKENS, "p50": TOKENS, "max": TOKENS}


def test_requests_the_stop_timeout_cuts_off_are_recorded_as_failures(tmp_path):
    """A server slower than the step plus its stop timeout: every request sent is still a record, marked failed."""
    records_csv = tmp_path / "records.csv"
    with slow_server(Pace(first_token_s=8.0)) as url:
        command = [sys.executable, "-m", "locust", "-f", "loadtest/locustfile.py,loadtest/shapes.py", "--headless",
                   "--only-summary", "--host", url, "--model", MODEL, "--shape-mode", "rate", "--levels", "4",
                   "--arrivals", "constant", "--warmup", "0s", "--step-time", "2s", "--stop-timeout", "1",
                   "--max-tokens", "4", "--records-csv", str(records_csv), "--exit-code-on-error", "0"]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    records = read_records(records_csv)
    assert len(records) >= 6  # 8 arrivals were due in the 2 s step
    assert all(not r.ok and r.error.startswith("unfinished") for r in records)
