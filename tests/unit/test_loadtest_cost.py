"""Pure cost functions: price lookup, $ per 1M tokens, SLO and goodput, Pareto front, percentiles."""

from __future__ import annotations

import math
from datetime import date

import pytest

from loadtest.cost import Slo, goodput_rps, meets_slo, pareto_front, percentile, usd_per_million_tokens
from quantserve.prices import PriceError, PriceProfile, PriceTable, load_prices, price_per_hour


def table(**prices: float) -> PriceTable:
    return PriceTable(profiles={name: PriceProfile(usd_per_hour=usd, source="test", recorded=date(2026, 1, 1))
                                for name, usd in prices.items()})


def test_shipped_price_table_has_the_default_profile_and_sources():
    prices = load_prices()
    assert "cpu-2vcpu" in prices.profiles
    assert any(name.startswith("gpu-") for name in prices.profiles)
    for profile in prices.profiles.values():
        assert profile.usd_per_hour > 0 and profile.source and profile.recorded


def test_price_lookup_multiplies_replicas():
    assert price_per_hour(table(a=0.5), "a", replicas=3) == pytest.approx(1.5)


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(PriceError, match="unknown hardware profile 'gpu-x'.*a, b"):
        price_per_hour(table(a=1, b=2), "gpu-x")


def test_invalid_price_table_is_a_price_error(tmp_path):
    path = tmp_path / "prices.yaml"
    path.write_text("profiles:\n  a: {usd_per_hour: -1, source: x, recorded: 2026-01-01}\n")
    with pytest.raises(PriceError, match="profiles.a.usd_per_hour"):
        load_prices(path)
    with pytest.raises(PriceError, match="not found"):
        load_prices(tmp_path / "missing.yaml")


def test_usd_per_million_tokens_follows_price_and_throughput():
    # $3.60 per hour at 1000 tokens/s is 3.6M tokens an hour: $1 per 1M.
    assert usd_per_million_tokens(3.6, 1000) == pytest.approx(1.0)
    assert usd_per_million_tokens(0.08925, 50) == pytest.approx(0.08925 / (50 * 3600) * 1e6)
    assert usd_per_million_tokens(1.0, 0) is None
    assert usd_per_million_tokens(1.0, math.nan) is None


def test_meets_slo_checks_each_bound():
    slo = Slo(ttft_ms=500, tpot_ms=50)
    assert meets_slo(400, 40, slo)
    assert not meets_slo(600, 40, slo)
    assert not meets_slo(400, 60, slo)
    assert not meets_slo(None, 40, slo)  # no first token: cannot meet a TTFT bound
    assert meets_slo(400, None, slo)  # one output token: no inter-token gap
    assert meets_slo(10_000, 10_000, Slo())


def test_goodput_counts_requests_within_slo_per_second():
    slo = Slo(ttft_ms=100, tpot_ms=20)
    requests = [(50, 10), (150, 10), (90, 30), (99, 19)]
    assert goodput_rps(requests, slo, window_s=4) == pytest.approx(0.5)
    assert goodput_rps(requests, slo, window_s=0) == 0.0


def test_pareto_front_keeps_points_nobody_beats_on_both_axes():
    points = [(1.0, 300.0), (2.0, 200.0), (3.0, 250.0), (0.5, 400.0), (2.0, 190.0), (4.0, 100.0)]
    assert pareto_front(points) == [3, 0, 4, 5]
    assert pareto_front([]) == []


def test_percentile_interpolates_like_numpy():
    values = [10.0, 20.0, 30.0, 40.0]
    assert percentile(values, 50) == pytest.approx(25.0)
    assert percentile(values, 90) == pytest.approx(37.0)
    assert percentile(values, 100) == 40.0
    assert percentile([], 50) is None
