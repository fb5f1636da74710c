"""The router section of the bench (issue 17): targets judged from the row's own figures, py-spy's collapsed stacks
summarised per function, a run of some sections merged into the previous full results."""

import json

from loadtest.bench.command import SECTIONS, merged_with_previous
from loadtest.bench.router_cpu import summarize_profile
from loadtest.bench.router_report import TARGETS, met, router_section

MACHINE = {"cpu": "Test CPU", "logical_cpus": 2, "memory_gib": 1.0, "cpu_flags": ["avx2", "fma"]}


def row(mode: str, **changes) -> dict:
    base = {"mode": mode, "deployment": "m--v", "stream_tokens": 48, "streams": 8, "clients": 8,
            "added_p50_ms": 2.0, "added_p99_ms": 7.0, "throughput_ratio": 0.95, "itl_ratio": 1.01,
            "throughput": [{"clients": 8, "direct_rps": 100.0, "routed_rps": 95.0, "ratio": 0.95},
                           {"clients": 32, "direct_rps": 120.0, "routed_rps": 90.0, "ratio": 0.75}],
            "direct_p50_ms": 10.0, "direct_p99_ms": 20.0, "routed_p50_ms": 12.0, "routed_p99_ms": 27.0,
            "health_p50_ms": 1.0, "direct_itl_ms": 10.0, "routed_itl_ms": 10.1, "machine_load": {"load_average": 1.5},
            "cpu": {"router_us_per_token": 80.0, "front_us_per_token": 30.0}, "profile": None}
    return {**base, **changes}


def test_each_target_is_judged_from_its_own_figure():
    fast, slow = row("fast"), row("slow", added_p50_ms=2.6, throughput_ratio=0.89, itl_ratio=1.04,
                                  cpu={"router_us_per_token": 101.0, "front_us_per_token": None})
    assert all(met(fast, key, limit, lower) for _, key, limit, lower in TARGETS)
    verdicts = {key: met(slow, key, limit, lower) for _, key, limit, lower in TARGETS}
    assert verdicts == {"added_p50_ms": False, "added_p99_ms": True, "throughput_ratio": False, "itl_ratio": False,
                        "router_us_per_token": False}
    text = "\n".join(router_section([fast, slow], MACHINE))
    assert text.count("**not met**") == 4
    assert "0.75 (120.0 / 90.0)" in text  # the 32-client ratio with its parts


def test_a_row_without_cpu_figures_claims_nothing_about_them():
    text = "\n".join(router_section([row("old", cpu=None)], MACHINE))
    assert "| router CPU per streamed token ≤ 100 µs | – |" in text


def test_the_profile_summary_counts_each_function_once_per_sample():
    collapsed = ("_run_once (asyncio/base_events.py:1);handle (serving/router.py:10);dumps (json/__init__.py:5) 30\n"
                 "_run_once (asyncio/base_events.py:1);handle (serving/router.py:12) 10\n"
                 "_run_once (asyncio/base_events.py:1);select (selectors.py:3) 60\n")
    summary = summarize_profile(collapsed)
    assert summary["samples"] == 100
    assert summary["self"][0] == {"function": "select (selectors.py)", "share": 0.6}
    inclusive = {entry["function"]: entry["share"] for entry in summary["inclusive"]}
    assert inclusive["handle (serving/router.py)"] == 0.4  # two lines of one function, one entry
    assert "_run_once (asyncio/base_events.py)" not in inclusive  # on every stack: says nothing
    components = {entry["component"]: entry["share"] for entry in summary["components"]}
    assert components == {"other": 0.9, "quantserve (serving/)": 0.1}  # by the innermost frame
    assert summary["quantserve"] == [{"function": "handle (serving/router.py)", "share": 0.4}]


def test_a_run_of_some_sections_keeps_the_others_with_their_own_dates(tmp_path):
    previous = {"date": "old", "quick": False, "plan": {}, "machine": MACHINE, "versions": {}, "sections": ["router",
                "batching"], "config_file": "c", "router": ["old row"], "batching": ["kept"]}
    (tmp_path / "results.json").write_text(json.dumps(previous))
    now = {"date": "new", "quick": False, "plan": {"repeats": 3}, "machine": {**MACHINE, "cpu": "Other"},
           "versions": {}, "sections": ["router"], "config_file": "c", "router": ["new row"]}
    merged = merged_with_previous(now, tmp_path / "results.json")
    assert merged["router"] == ["new row"] and merged["batching"] == ["kept"] and merged["date"] == "old"
    assert merged["runs"]["router"]["date"] == "new" and merged["runs"]["router"]["machine"]["cpu"] == "Other"
    assert merged_with_previous({**now, "quick": True}, tmp_path / "results.json")["date"] == "new"
    assert merged_with_previous({**now, "sections": list(SECTIONS)}, tmp_path / "results.json") == \
        {**now, "sections": list(SECTIONS)}


def test_a_cpu_target_not_met_is_explained_from_the_streamed_profile():
    streamed = {"samples": 100, "seconds": 10.0, "process_cpu_s": 2.0, "max_tokens": 48,
                "components": [{"component": "Serve's status read by the router's probe", "share": 0.3}],
                "quantserve": [{"function": "stream_body (serving/generation.py)", "share": 0.1}],
                "self": [{"function": "send (uvicorn/x.py)", "share": 0.2}]}
    slow = row("slow", cpu={"router_us_per_token": 500.0, "router_gross_us_per_token": 600.0, "tokens": 384,
                            "router_idle_cores": 0.03, "front_us_per_token": 50.0},
               profile={"router_streaming": streamed})
    text = "\n".join(router_section([slow], MACHINE))
    assert "500 µs net of its idle use (3.0 % of a core" in text
    assert "24.0 ms of router CPU per streamed request" in text  # 500 µs x 384 tokens / 8 streams
    assert "held the GIL 3.0 % of the time" in text  # 30 % of 1 s of samples in 10 s
    assert "Profile of the router's replica, slow, streamed 48-token requests" in text
