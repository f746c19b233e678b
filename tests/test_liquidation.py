"""Liquidation prices against hand-computed cases, and their invariants under hypothesis."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.state.liquidation import (
    DEFAULT_TIERS, divergence_bps, funding_payment, liquidation_price, maintenance_margin, maintenance_rate, parse_tiers,
)

FLAT = ((math.inf, 0.005),)  # one tier: 0.5% maintenance


def test_isolated_long_with_fee_and_funding():
    """Long 2 @ 100, 10x: (100 - 10 + 0.02/2) / (1 - 0.005 - 0.0005) = 90.50779..."""
    f = funding_payment(2.0, 100.0, 0.0001)
    assert f == pytest.approx(0.02)
    p = liquidation_price(2.0, 100.0, 10.0, tiers=FLAT, fee=0.0005, funding=f)
    assert p == pytest.approx(90.01 / 0.9945, rel=1e-12)


def test_isolated_short_with_fee_and_funding_received():
    """Short 2 @ 100, 10x, positive funding is received: (110 + 0.01) / 1.0055 = 109.40825..."""
    f = funding_payment(-2.0, 100.0, 0.0001)
    assert f == pytest.approx(-0.02)
    p = liquidation_price(-2.0, 100.0, 10.0, tiers=FLAT, fee=0.0005, funding=f)
    assert p == pytest.approx(110.01 / 1.0055, rel=1e-12)


def test_cross_long_uses_shared_equity_and_other_margin():
    """Cross long 1, mark 100, equity 20, others' maintenance 2: (2 - 20 + 100) / 0.9945."""
    p = liquidation_price(1.0, 100.0, 10.0, tiers=FLAT, fee=0.0005, cross_equity=20.0, mark=100.0, other_mm=2.0)
    assert p == pytest.approx(82.0 / 0.9945, rel=1e-12)


def test_cross_short_uses_shared_equity_and_other_margin():
    """Cross short 1, mark 100, equity 20, others' maintenance 2: (20 + 100 - 2) / 1.0055."""
    p = liquidation_price(-1.0, 100.0, 10.0, tiers=FLAT, fee=0.0005, cross_equity=20.0, mark=100.0, other_mm=2.0)
    assert p == pytest.approx(118.0 / 1.0055, rel=1e-12)


def test_cross_funding_payment_moves_a_long_up():
    """Funding a cross long will pay at the next funding time raises its liquidation price by F / (q(1-m-f))."""
    base = liquidation_price(1.0, 100.0, 10.0, tiers=FLAT, fee=0.0, cross_equity=20.0, mark=100.0)
    paid = liquidation_price(1.0, 100.0, 10.0, tiers=FLAT, fee=0.0, cross_equity=20.0, mark=100.0, funding=0.5)
    assert paid - base == pytest.approx(0.5 / 0.995, rel=1e-9)


def test_tier_is_looked_up_again_at_the_liquidation_price():
    """Notional 100 is in the 5% tier, but at the liquidation price (~84) it is in the 1% tier: 80 / 0.99."""
    tiers = ((95.0, 0.01), (math.inf, 0.05))
    p = liquidation_price(1.0, 100.0, 5.0, tiers=tiers, fee=0.0)
    assert p == pytest.approx(80.0 / 0.99, rel=1e-12)
    assert maintenance_rate(p, tiers) == 0.01


def test_overcollateralised_cross_long_has_no_liquidation_price():
    """A cross long backed by more equity than its notional cannot be liquidated by price."""
    assert liquidation_price(1.0, 100.0, 10.0, tiers=FLAT, cross_equity=500.0, mark=100.0) is None


def test_tiers_parse_and_divergence():
    """Config tiers are validated (increasing caps, rates in (0, 1)); divergence is in bps of ours."""
    assert parse_tiers([[1_000, 0.01], [2_000, 0.02]])[-1] == (math.inf, 0.02)
    for bad in ([], [[1_000, 0.0]], [[2_000, 0.01], [1_000, 0.02]]):
        with pytest.raises(ValueError):
            parse_tiers(bad)
    assert divergence_bps(100.0, 99.5) == pytest.approx(-50.0)
    assert divergence_bps(None, 99.5) is None
    assert maintenance_margin(-2.0, 100.0, FLAT) == pytest.approx(1.0)


sizes = st.floats(0.001, 1_000.0)
prices = st.floats(0.01, 100_000.0)
leverages = st.floats(1.01, 125.0)


@settings(max_examples=300, deadline=None)
@given(sizes, prices, leverages, leverages, st.floats(0.0, 0.001), st.floats(-0.001, 0.001))
def test_long_liquidation_price_rises_with_leverage(q, entry, l1, l2, fee, rate):
    """Isolated long: more leverage never puts the liquidation price further away."""
    lo, hi = sorted((l1, l2))
    f = funding_payment(q, entry, rate)
    p_lo = liquidation_price(q, entry, lo, fee=fee, funding=f)
    p_hi = liquidation_price(q, entry, hi, fee=fee, funding=f)
    if p_lo is not None:
        assert p_hi is not None and p_hi >= p_lo * (1 - 1e-12)


@settings(max_examples=300, deadline=None)
@given(sizes, prices, leverages, leverages)
def test_short_liquidation_price_falls_with_leverage(q, entry, l1, l2):
    """Isolated short: more leverage never puts the liquidation price further away."""
    lo, hi = sorted((l1, l2))
    assert liquidation_price(-q, entry, hi) <= liquidation_price(-q, entry, lo) * (1 + 1e-12)


def _isolated_margin_gap(size, entry, lev, fee, price):
    """Isolated equity minus (maintenance + closing fee) at ``price``, default tiers."""
    q = abs(size)
    equity = q * entry / lev + size * (price - entry)
    return equity - q * price * (maintenance_rate(q * price, DEFAULT_TIERS) + fee)


@settings(max_examples=300, deadline=None)
@given(sizes, prices, leverages, st.booleans(), st.floats(0.0, 0.001))
def test_isolated_liquidation_price_is_the_first_crossing(q, entry, lev, long, fee):
    """Isolated: liquidatable at the computed price, and not before it on the way from entry."""
    size = q if long else -q
    p = liquidation_price(size, entry, lev, fee=fee)
    if p is None:
        return
    tol = 1e-7 * q * entry
    past = p * (1 - 1e-9) if long else p * (1 + 1e-9)  # a bracket cap is inclusive: just past it
    assert _isolated_margin_gap(size, entry, lev, fee, past) <= tol
    if (p < entry) == long:  # not liquidatable at entry already
        for k in range(1, 200):
            x = entry + (p - entry) * k / 200
            assert _isolated_margin_gap(size, entry, lev, fee, x) > -tol, x


def test_short_just_past_a_bracket_cap_is_liquidatable_at_the_cap():
    """Short 306 @ 16340, 21x: 5.00004M is in the 5% bracket (margin 4.76%): liquidatable at the 5M boundary."""
    p = liquidation_price(-306.0, 16340.0, 21.0, fee=0.0)
    assert p == pytest.approx(5_000_000.0 / 306.0)


def test_short_is_liquidated_at_a_bracket_boundary():
    """Short 288 @ 15253, 6x: 2.5% at the liquidation price is not enough yet, 5% past 5M notional is."""
    p = liquidation_price(-288.0, 15253.0, 6.0, fee=0.0)
    assert p == pytest.approx(5_000_000.0 / 288.0)
