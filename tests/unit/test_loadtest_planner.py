"""The planner's rules on points made here: replicas from the goodput curve, its first miss, quality, workload."""

from __future__ import annotations

import math

import pytest

from loadtest.planner import Point, Target, Verdict, judge, recommend, refusal

PRICE = 0.1  # $ per replica-hour


def point(rate: float, ttft: float = 200.0, itl: float = 20.0, label: str = "v", kept_up: bool = True,
          errors: int = 0, output: float = 32.0) -> Point:
    return Point(run_id="r", label=label, hardware_profile="cpu", measured_replicas=1, mode="rate", level=rate,
                 per_replica_rps=rate, requests=50, errors=errors, itl_gaps=1500, ttft_p90_ms=ttft, itl_p90_ms=itl,
                 e2e_p90_ms=ttft + 31 * itl, prompt_tokens=160.0, output_tokens=output, kept_up=kept_up)


TARGET = Target(rate_rps=3.0, ttft_p90_ms=500, itl_p90_ms=50, headroom=0.2)
QUALITY = {"ppl_increase_pct": 5.0, "greedy_agreement": 0.9}


def test_replicas_cover_the_rate_with_headroom_at_the_best_measured_point():
    verdict = judge(Verdict("v", "cpu", QUALITY, [point(0.5), point(1.0), point(2.0, ttft=900)]), TARGET, PRICE)
    best = verdict.best
    assert best.point.per_replica_rps == 1.0
    assert best.replicas == math.ceil(3.0 * 1.2 / 1.0) == 4
    assert best.monthly_usd == pytest.approx(4 * PRICE * 730)
    tokens_per_month = 3.0 * 3600 * 730 * 32
    assert best.usd_per_m_output == pytest.approx(best.monthly_usd / tokens_per_month * 1e6)
    assert any("scale linearly" in note for note in best.notes)
    assert any("at or below the measured 1 req/s" in note for note in best.notes)
    assert not any("capacity may be higher" in note for note in best.notes)  # 2 req/s was measured and failed


def test_the_curve_ends_at_its_first_miss_even_if_a_higher_rate_looks_fine():
    points = [point(0.5), point(1.0, itl=80), point(2.0)]
    verdict = judge(Verdict("v", "cpu", QUALITY, points), TARGET, PRICE)
    assert [o.point.per_replica_rps for o in verdict.options] == [0.5]
    assert verdict.best.replicas == math.ceil(3.6 / 0.5)


def test_a_step_that_fell_behind_or_failed_does_not_count():
    verdict = judge(Verdict("v", "cpu", QUALITY, [point(1.0, kept_up=False)]), TARGET, PRICE)
    assert verdict.best is None and "achieved less than offered" in verdict.reasons[0]
    verdict = judge(Verdict("v", "cpu", QUALITY, [point(1.0, errors=2)]), TARGET, PRICE)
    assert verdict.best is None and "2 errors" in verdict.reasons[0]


def test_the_highest_measured_rate_meeting_the_slo_is_flagged_not_extrapolated():
    verdict = judge(Verdict("v", "cpu", QUALITY, [point(0.5), point(1.0)]), TARGET, PRICE)
    assert verdict.best.point.per_replica_rps == 1.0
    assert any("capacity may be higher, not measured" in note for note in verdict.best.notes)


def test_quality_floor_and_workload_exclude_a_variant():
    strict = Target(rate_rps=3.0, ttft_p90_ms=500, itl_p90_ms=50, max_ppl_increase_pct=2.0)
    verdict = judge(Verdict("v", "cpu", QUALITY, [point(1.0)]), strict, PRICE)
    assert verdict.best is None and verdict.reasons == ["perplexity +5 % > +2 %"]
    unknown = judge(Verdict("v", "cpu", {}, [point(1.0)]), strict, PRICE)
    assert unknown.reasons == ["perplexity increase not measured (floor +2 %)"]
    longer = Target(rate_rps=3.0, ttft_p90_ms=500, itl_p90_ms=50, output_tokens=256)
    verdict = judge(Verdict("v", "cpu", QUALITY, [point(1.0)]), longer, PRICE)
    assert verdict.best is None and "measured output tokens 32 per request, target 256" in verdict.reasons[0]


def test_the_cheapest_variant_is_recommended_and_a_refusal_is_one_line():
    fast = judge(Verdict("fast", "cpu", QUALITY, [point(2.0, label="fast")]), TARGET, PRICE)
    slow = judge(Verdict("slow", "cpu", QUALITY, [point(0.5, label="slow")]), TARGET, PRICE)
    assert recommend([slow, fast]) is fast.best and fast.best.replicas == 2 < slow.best.replicas
    tight = Target(rate_rps=3.0, ttft_p90_ms=100, itl_p90_ms=50)
    verdicts = [judge(Verdict(v.label, "cpu", QUALITY, v.points), tight, PRICE) for v in (fast, slow)]
    assert recommend(verdicts) is None
    line = refusal(verdicts, tight)
    assert "\n" not in line and line.startswith("no variant meets 3 req/s, TTFT p90 ≤ 100 ms")
    assert "fast on cpu: at 2 req/s per replica: TTFT p90 200 ms > 100 ms" in line and "slow on cpu:" in line


def test_at_equal_cost_the_better_quality_wins():
    worse = judge(Verdict("worse", "cpu", {"ppl_increase_pct": 20.0}, [point(1.0, label="worse")]), TARGET, PRICE)
    better = judge(Verdict("better", "cpu", {"ppl_increase_pct": 1.0}, [point(1.0, label="better", ttft=400)]),
                   TARGET, PRICE)
    assert worse.best.monthly_usd == better.best.monthly_usd
    assert recommend([worse, better]) is better.best
