"""Open-loop load above capacity: a deliberately slow endpoint on 127.0.0.1 (tests/helpers/slow_sse.py), a real
`quantserve loadtest run` with its Locust process, and a client cap of 2 requests in flight. Requests that wait for a
free client are sent late; their latency counts from when they were due, so the queue shows, and the report says
that fewer requests were achieved than offered."""

from __future__ import annotations

import json
import statistics

import pytest

from loadtest.records import read_records
from tests.helpers import run_quantserve
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
    assert step["achieved_rps"] == pytest.approx(capacity, rel=0.35)
    assert step["cap_hits"] > 0 and step["rate_users"] == CAP
    row = next(line for line in (overloaded_run / "report.md").read_text().splitlines()
               if line.startswith(f"| {MODEL} | 25 req/s constant | {step['requests']} |"))
    assert f"| {step['offered_rps']:.2f} | {step['achieved_rps']:.2f} |" in row and f"(cap {CAP})" in row


def test_latency_counts_from_the_schedule_so_the_queue_shows(overloaded_run):
    records = measured_records(overloaded_run)
    assert len(records) >= 10
    third = len(records) // 3
    early, late = records[:third], records[-third:]
    # Sent later and later behind schedule: the lag grows over the step (about 1.4 s per second of overload).
    assert statistics.mean(r.lag_ms for r in late) > statistics.mean(r.lag_ms for r in early) + 1000
    assert all(r.waited_for_user for r in late)
    # TTFT from the schedule carries the lag; from the send it stays what the server takes (50 ms, plus noise).
    from_send = [r.ttft_ms - r.lag_ms for r in records]
    assert max(from_send) < 10 * PACE.first_token_s * 1000
    assert statistics.mean(r.ttft_ms for r in late) > statistics.mean(r.ttft_ms for r in early) + 1000
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
