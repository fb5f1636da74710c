"""The load test's small pure parts: stream parsing, step plans, arrivals, workloads, records, target checks."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from loadtest.records import RequestRecord, read_records, write_records
from loadtest.sse import parse_stream, time_per_output_token_ms, usage_problem
from loadtest.steps import ArrivalSchedule, arrivals_due, build_steps, parse_duration, parse_levels, state_at, users_for
from loadtest.target import LoadtestError, check_target, select_model_ids
from loadtest.workload import WorkloadError, load_prompt_set, output_length_sampler, prompt_set_names


def sse(*events) -> list[str]:
    return [f"data: {event if isinstance(event, str) else json.dumps(event)}" for event in events]


def chunk(text=None, finish=None) -> dict:
    delta = {"content": text} if text is not None else {"role": "assistant"}
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def timed(lines: list[str], step_s: float = 0.1) -> list[tuple[float, str]]:
    return [(index * step_s, line) for index, line in enumerate(lines)]


def test_stream_measures_first_token_gaps_and_usage():
    usage = {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    lines = sse(chunk(), chunk("a"), chunk("b"), chunk("c", "length"), {"choices": [], "usage": usage}, "[DONE]")
    result = parse_stream(timed(lines))
    assert result.first_token_s == pytest.approx(0.1) and result.last_token_s == pytest.approx(0.3)
    assert result.chunks == 3 and result.gaps_ms == pytest.approx([100, 100])
    assert result.done and result.usage == usage and result.finish_reason == "length"
    assert usage_problem(result, max_tokens=3) == ""
    assert time_per_output_token_ms(result, 3) == pytest.approx(100)


def test_stream_usage_disagreements_are_reported():
    two_chunks = sse(chunk("a"), chunk("b", "stop"))
    few = parse_stream(timed(two_chunks + sse({"usage": {"prompt_tokens": 1, "completion_tokens": 1}}, "[DONE]")))
    assert "2 chunks" in usage_problem(few, 16)
    missing = parse_stream(timed(two_chunks + sse("[DONE]")))
    assert "no usage" in usage_problem(missing, 16)
    short = parse_stream(timed(sse(chunk("a", "length"), {"usage": {"prompt_tokens": 1, "completion_tokens": 1}})))
    assert "max_tokens was 8" in usage_problem(short, 8)


def test_stream_error_event_and_malformed_data_stop_the_parse():
    error = parse_stream(timed(sse(chunk("a"), {"error": {"message": "engine died", "code": 500}}, chunk("b"))))
    assert error.error == "engine died (500)" and error.chunks == 1 and not error.done
    assert "malformed" in parse_stream(timed(["data: {nope"])).error


def test_step_plan_walks_warmup_then_measure_per_level():
    steps = build_steps("users", [1, 4], warmup_s=2, duration_s=10)
    assert state_at(steps, 0).phase == "warmup"
    assert (state_at(steps, 5).step.level, state_at(steps, 5).phase) == (1, "measure")
    assert (state_at(steps, 12.5).step.level, state_at(steps, 12.5).phase) == (4, "warmup")
    assert state_at(steps, 24) is None
    rate_step = build_steps("rate", [0.5], 1, 1)[0]
    assert users_for(steps[1], rate_users=16) == 4 and users_for(rate_step, rate_users=16) == 16


def test_levels_and_durations_parse_or_explain():
    assert parse_levels("1,2,4", "users") == [1, 2, 4]
    assert parse_levels("0.5,2", "rate") == [0.5, 2]
    assert parse_duration("30s") == 30 and parse_duration("2m") == 120 and parse_duration("500ms") == 0.5
    for bad in ("1.5", "0", "a,b", ""):
        with pytest.raises(ValueError):
            parse_levels(bad, "users")
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration("soon")


def test_poisson_arrivals_have_the_asked_mean_rate():
    arrivals = ArrivalSchedule(rate_per_s=4.0, start_s=100.0, rng=random.Random(1))
    times = [arrivals.take() for _ in range(4000)]
    assert times == sorted(times) and times[0] > 100
    assert (times[-1] - 100) / len(times) == pytest.approx(0.25, rel=0.05)
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    assert max(gaps) > 4 * min(gaps)  # exponential gaps vary


def test_constant_arrivals_are_evenly_spaced_and_counted_per_window():
    arrivals = ArrivalSchedule(rate_per_s=4.0, start_s=10.0, rng=random.Random(1), kind="constant")
    assert [arrivals.take() for _ in range(4)] == pytest.approx([10.0, 10.25, 10.5, 10.75])
    step = build_steps("rate", [4.0], warmup_s=1, duration_s=2)[0]
    assert arrivals_due(step, seed=0, kind="constant", from_s=1, to_s=3) == 8
    poisson_due = arrivals_due(step, seed=0, kind="poisson", from_s=1, to_s=3)
    assert poisson_due == arrivals_due(step, seed=0, kind="poisson", from_s=1, to_s=3) and poisson_due > 0
    with pytest.raises(ValueError, match="unknown arrival kind"):
        ArrivalSchedule(1.0, 0.0, random.Random(0), kind="bursty")


def test_shipped_prompt_sets_load():
    assert {"short", "long", "mix"} <= set(prompt_set_names())
    short, long, mix = (load_prompt_set(name) for name in ("short", "long", "mix"))
    assert len({p.id for p in mix}) == len(mix) and {p.id for p in mix} <= {p.id for p in short + long}
    assert min(len(p.text) for p in long) > 5 * max(len(p.text) for p in short)
    with pytest.raises(WorkloadError, match="unknown prompt set"):
        load_prompt_set("nonexistent")


def test_output_length_distributions_stay_in_range():
    rng = random.Random(0)
    assert output_length_sampler("64", rng)() == 64
    assert {output_length_sampler("uniform:16:32", rng)() for _ in range(200)} <= set(range(16, 33))
    assert all(1 <= output_length_sampler("exp:8", rng)() <= 4096 for _ in range(200))
    with pytest.raises(WorkloadError):
        output_length_sampler("gamma:1:2", rng)


def test_records_round_trip_through_csv(tmp_path):
    records = [RequestRecord(model="m:v", ok=True, ttft_ms=12.5, output_tokens=3, usage_checked=True),
               RequestRecord(model="m:v", ok=False, error="HTTP 503: busy, try later", status=503)]
    write_records(tmp_path / "r.csv", records)
    assert read_records(tmp_path / "r.csv") == records


def test_targets_stay_on_loopback_unless_allowed():
    assert check_target("http://127.0.0.1:8000/", allow_remote=False) == "http://127.0.0.1:8000"
    assert check_target("http://localhost:9", allow_remote=False) and check_target("http://[::1]:9", False)
    with pytest.raises(LoadtestError, match="not loopback"):
        check_target("http://10.0.0.5:8000", allow_remote=False)
    assert check_target("http://10.0.0.5:8000", allow_remote=True)
    with pytest.raises(LoadtestError, match="not an http"):
        check_target("127.0.0.1:8000", allow_remote=False)


def test_variant_selection_uses_the_servers_list():
    available = ["m", "m:b", "m:a", "other:x"]
    assert select_model_ids(available, "m", "all") == ["m:a", "m:b"]
    assert select_model_ids(available, "m:a", "") == ["m:a"]
    assert select_model_ids(available, "m", "a, c") == ["m:a", "m:c"]
    with pytest.raises(LoadtestError, match="no variants"):
        select_model_ids(available, "zzz", "all")


def test_locust_side_imports_no_serving_code():
    """The Locust process stays free of serving, Ray and httpx imports (gevent patching, start-up time)."""
    code = ("import sys, locust, loadtest.locustfile, loadtest.shapes; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'serving', 'quantize', 'ray', 'httpx'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize(("title", "deployment"), [
    ("ray::ServeReplica:quantserve:Router", "Router"),
    ("ray::ServeReplica:quantserve:smollm2-135m--vllm.initialize_and_get_metadata", "smollm2-135m--vllm"),
    ("ray::ServeReplica:quantserve:qwen2.5-1b--onnx-int4", "qwen2.5-1b--onnx-int4"),
    ("ray::ServeReplica:quantserve:qwen2.5-1b--onnx-int4.generate", "qwen2.5-1b--onnx-int4"),
])
def test_the_deployment_is_read_from_a_replica_process_title(title, deployment):
    from loadtest.soak import deployment_of

    assert deployment_of(title) == deployment


def test_prompt_tokens_reused_from_the_servers_prefix_cache_are_recorded_and_summed():
    from loadtest.measure import measure_stream
    from loadtest.results import reused_share

    usage = {"prompt_tokens": 40, "completion_tokens": 1, "total_tokens": 41,
             "prompt_tokens_details": {"cached_tokens": 30}}
    record = RequestRecord(max_tokens=1)
    measure_stream(record, parse_stream(timed(sse(chunk("a", "length"), {"choices": [], "usage": usage}, "[DONE]"))),
                   due_s=0.0)
    assert record.cached_tokens == 30
    untold = RequestRecord(prompt_tokens=100)  # a server that does not say: left out, not counted as 0 reused
    assert reused_share([record, RequestRecord(prompt_tokens=20, cached_tokens=0), untold]) == pytest.approx(30 / 60)
    assert reused_share([untold]) is None
