"""leverage_jump on crafted position/account streams."""

from detectors.leverage_jump import LeverageJump, LeverageJumpConfig
from monitor.events import Account, Heartbeat, Position
from monitor.pipeline import Pipeline
from monitor.state import MarketState
from tests.streams import T0


def run(events, **cfg):
    p = Pipeline(MarketState(), [LeverageJump(LeverageJumpConfig(**cfg))], tick_ms=250)
    return p.process(events) + p.flush()


def pos(acct, ts, size, lev, symbol="BTC-PERP", entry=100.0):
    return Position(account=acct, symbol=symbol, ts=ts, size=size, entry_price=entry, leverage=lev)


def test_account_going_3x_to_25x_is_flagged():
    """An account's jump from its usual 3x to 25x with 8x the notional is flagged."""
    out = run([pos("a", T0, 100, 3), pos("a", T0 + 60_000, 120, 3), pos("a", T0 + 61_000, 1000, 25),
               Heartbeat(ts=T0 + 62_000)])
    [a] = out
    assert a.kind == "leverage_jump" and a.account == "a" and a.ts == T0 + 61_000
    assert set(a.detail["reasons"]) == {"leverage", "notional"} and a.detail["usual_leverage"] == 3.0


def test_steady_account_and_first_positions_are_silent():
    """Ordinary resizing at the usual leverage, and an account's first position, raise nothing."""
    events = [pos("a", T0 + i * 10_000, 100 + 20 * (i % 3), 5) for i in range(30)]
    events += [pos("b", T0 + 5, 5000, 20)]
    assert run(events + [Heartbeat(ts=T0 + 400_000)]) == []


def test_margin_ratio_falling_fast():
    """Maintenance margin rising from 30% to 90% of equity within the window is flagged."""
    out = run([Account(account="a", ts=T0, equity=1000, maintenance_margin=300),
               Account(account="a", ts=T0 + 20_000, equity=400, maintenance_margin=360),
               Heartbeat(ts=T0 + 21_000)])
    [a] = out
    assert a.detail["reasons"] == ["margin_ratio"] and a.detail["margin_ratio"] == 0.9


def test_cohort_raising_leverage_on_one_symbol():
    """Many accounts raising leverage on one symbol within a minute is a cohort anomaly."""
    events = [pos(f"c{i}", T0 + i, 10, 3) for i in range(30)]
    events += [Heartbeat(ts=T0 + 100_000)]
    events += [pos(f"c{i}", T0 + 120_000 + i * 1000, 10, 20) for i in range(30)]
    events += [Heartbeat(ts=T0 + 200_000)]
    cohort = [a for a in run(events) if a.detail["scope"] == "cohort"]
    assert cohort and cohort[0].symbol == "BTC-PERP" and cohort[0].account is None
    assert cohort[0].detail["accounts_raising"] >= 10


def test_per_account_state_is_bounded():
    """Per-account state never exceeds max_accounts; the least recently updated go first."""
    d = LeverageJump(LeverageJumpConfig(max_accounts=100))
    p = Pipeline(MarketState(), [d], tick_ms=250)
    p.process([pos(f"a{i}", T0 + i, 1, 2) for i in range(1000)])
    assert len(d.accounts) == 100 and d.evicted == 900 and "a999" in d.accounts


def test_account_first_seen_closing_has_no_usual_leverage_yet():
    """A feed joined mid-stream: an account first seen closing a position, then opening at its
    usual 20x, is not a jump (the close taught no usual leverage)."""
    events = [pos("a", T0, 0.0, 20), pos("a", T0 + 30_000, 3000, 20, symbol="ETH-PERP"),
              pos("a", T0 + 90_000, 2500, 20, symbol="ETH-PERP"), Heartbeat(ts=T0 + 100_000)]
    assert run(events) == []


def test_leverage_only_jump_is_scored_by_its_leverage_ratio():
    """A jump on leverage alone (notional below min_notional) scores new / usual leverage, not a notional ratio."""
    out = run([pos("a", T0, 1, 3), pos("a", T0 + 60_000, 1, 3), pos("a", T0 + 61_000, 500, 30),
               Heartbeat(ts=T0 + 62_000)])
    [a] = out
    assert a.detail["reasons"] == ["leverage"] and a.score == 30 / a.detail["usual_leverage"]


def test_flat_account_opening_far_above_its_usual_effective_leverage():
    """An account usually at ~5x its equity, flat for a while, opening 24x its equity at a
    leverage setting not far above its usual: flagged on effective leverage."""
    eq = lambda ts: Account(account="a", ts=ts, equity=20_000, maintenance_margin=0)  # noqa: E731
    hb = lambda ts: Heartbeat(ts=ts + 500)  # noqa: E731  (a tick between the changes)
    events = [pos("a", T0, 1000, 15), eq(T0 + 1), hb(T0), pos("a", T0 + 30_000, 900, 15), eq(T0 + 30_001),
              hb(T0 + 30_000), pos("a", T0 + 60_000, 0, 15), eq(T0 + 60_001), hb(T0 + 60_000),
              pos("a", T0 + 200_000, 4800, 25, symbol="ETH-PERP"), eq(T0 + 200_001), Heartbeat(ts=T0 + 201_000)]
    [a] = run(events)
    assert a.detail["reasons"] == ["effective_leverage"] and a.ts == T0 + 200_000
    assert a.detail["effective_leverage"] == 24.0 and round(a.detail["usual_effective_leverage"], 2) == 4.85


def test_levering_up_on_two_symbols_at_once_flags_both():
    """One account going 3x -> 40x on BTC and, on the same collateral, opening 10x on ETH in the
    same second: one anomaly per symbol (the cool-down is per symbol); none again on BTC."""
    events = [pos("a", T0, 100, 3), pos("a", T0 + 60_000, 100, 3),
              pos("a", T0 + 61_000, 2000, 40), pos("a", T0 + 61_000, 500, 10, symbol="ETH-PERP"),
              pos("a", T0 + 70_000, 2100, 40), Heartbeat(ts=T0 + 72_000)]
    out = run(events)
    assert [(a.symbol, a.ts) for a in out] == [("BTC-PERP", T0 + 61_000), ("ETH-PERP", T0 + 61_000)]


def test_first_positions_arriving_together_are_history_not_a_jump():
    """An account first seen with a small and a large position in the same tick (its book at
    the start of the feed) is not a jump on effective leverage."""
    eq = Account(account="a", ts=T0 + 2, equity=10_000, maintenance_margin=0)
    events = [pos("a", T0, 200, 20), pos("a", T0 + 1, 1000, 20, symbol="ETH-PERP"), eq, Heartbeat(ts=T0 + 5_000)]
    assert run(events) == []


def test_back_to_normal_size_after_a_small_position_is_not_a_jump():
    """An account at its usual ~10x on its equity, down to a small position for a few minutes,
    then back to ~10x: notional x12 on the small one, but not far above its usual."""
    eq = lambda ts: Account(account="a", ts=ts, equity=10_000, maintenance_margin=0)  # noqa: E731
    hb = lambda ts: Heartbeat(ts=ts + 500)  # noqa: E731
    events = [pos("a", T0, 1000, 20), eq(T0 + 1), hb(T0), pos("a", T0 + 100_000, 1100, 20), eq(T0 + 100_001),
              hb(T0 + 100_000), pos("a", T0 + 200_000, 80, 20), eq(T0 + 200_001), hb(T0 + 200_000),
              pos("a", T0 + 400_000, 1000, 20), eq(T0 + 400_001), Heartbeat(ts=T0 + 401_000)]
    assert run(events) == []


def test_margin_ratio_anomaly_is_named_on_the_largest_position():
    """An account's margin-ratio anomaly carries the symbol of its largest position (routes
    and incidents match on symbols), its positions listed in detail."""
    out = run([pos("a", T0, 10, 2, symbol="ETH-PERP"), pos("a", T0, 50, 2),
               Account(account="a", ts=T0, equity=1000, maintenance_margin=300),
               Account(account="a", ts=T0 + 20_000, equity=400, maintenance_margin=360),
               Heartbeat(ts=T0 + 21_000)])
    [a] = out
    assert a.detail["reasons"] == ["margin_ratio"] and a.symbol == "BTC-PERP"
    assert [p["symbol"] for p in a.detail["positions"]] == ["BTC-PERP", "ETH-PERP"]


def test_one_observation_is_not_a_usual_effective_leverage():
    """An account seen once at 3x its equity, then at 13x on a second position: one observation
    is not its usual (a calm book ranges widely), so no effective-leverage jump."""
    eq = lambda ts: Account(account="a", ts=ts, equity=10_000, maintenance_margin=0)  # noqa: E731
    events = [pos("a", T0, 300, 20), eq(T0 + 1), Heartbeat(ts=T0 + 500),
              pos("a", T0 + 100_000, 1000, 20, symbol="ETH-PERP"), eq(T0 + 100_001), Heartbeat(ts=T0 + 101_000)]
    assert run(events) == []
