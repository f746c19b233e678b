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
    out = run([pos("a", T0, 600, 5), Account(account="a", ts=T0 + 50_000, equity=1000, maintenance_margin=300),
               Account(account="a", ts=T0 + 70_000, equity=400, maintenance_margin=360),
               Heartbeat(ts=T0 + 71_000)])
    [a] = out
    assert a.detail["reasons"] == ["margin_ratio"] and a.detail["margin_ratio"] == 0.9


def test_cohort_raising_leverage_on_one_symbol():
    """Many accounts raising leverage on one symbol within the window is a cohort anomaly
    (positions below the account rules' USD floor: the cohort alone speaks)."""
    events = [pos(f"c{i}", T0 + i, 100, 3) for i in range(30)]
    events += [Heartbeat(ts=T0 + 100_000)]
    events += [pos(f"c{i}", T0 + 120_000 + i * 2000, 400, 20) for i in range(30)]
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
    """A jump on leverage alone (notional x6, under notional_ratio) scores new / usual leverage,
    not a notional ratio."""
    out = run([pos("a", T0, 100, 3), pos("a", T0 + 60_000, 100.5, 3), pos("a", T0 + 61_000, 600, 30),
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


def test_levering_up_on_two_symbols_at_once_is_one_anomaly():
    """One account going 3x -> 40x on BTC and, on the same collateral, opening 10x on ETH in the
    same second: one story, one anomaly, named on its largest position with both symbols listed;
    none again within the cool-down."""
    events = [pos("a", T0, 100, 3)] + [Heartbeat(ts=T0 + k * 1_000) for k in range(1, 61)]
    events += [pos("a", T0 + 60_000, 100, 3)]
    events += [Heartbeat(ts=T0 + k * 250) for k in range(241, 245)]  # the clock caught up by the jump
    events += [pos("a", T0 + 61_100, 2000, 40), pos("a", T0 + 61_100, 500, 10, symbol="ETH-PERP")]
    events += [Heartbeat(ts=T0 + 62_000 + k * 1_000) for k in range(8)]
    events += [pos("a", T0 + 70_000, 2100, 40), Heartbeat(ts=T0 + 72_000)]
    [a] = run(events)
    assert (a.symbol, a.ts, a.account) == ("BTC-PERP", T0 + 61_100, "a")
    assert a.detail["symbols"] == ["BTC-PERP", "ETH-PERP"] and set(a.detail["reasons"]) == {"leverage", "notional"}


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


def test_margin_ratio_anomaly_is_named_where_the_margin_moved():
    """An account's margin-ratio anomaly carries a symbol (routes and incidents match on
    symbols): its largest position when prices moved it, the position it just changed when
    that moved it; its positions are listed in detail."""
    base = [pos("a", T0, 100, 2, symbol="ETH-PERP"), pos("a", T0, 500, 2),
            Account(account="a", ts=T0 + 50_000, equity=1000, maintenance_margin=300)]
    [a] = run(base + [Account(account="a", ts=T0 + 70_000, equity=400, maintenance_margin=360),
                      Heartbeat(ts=T0 + 71_000)])
    assert a.detail["reasons"] == ["margin_ratio"] and a.symbol == "BTC-PERP"
    assert [p["symbol"] for p in a.detail["positions"]] == ["BTC-PERP", "ETH-PERP"]
    [b] = run(base + [pos("a", T0 + 69_000, 150, 2, symbol="ETH-PERP"),
                      Account(account="a", ts=T0 + 70_000, equity=400, maintenance_margin=360),
                      Heartbeat(ts=T0 + 71_000)])
    assert b.symbol == "ETH-PERP"


def test_one_observation_is_not_a_usual_effective_leverage():
    """An account seen once at 3x its equity, then at 13x on a second position: one observation
    is not its usual (a calm book ranges widely), so no effective-leverage jump."""
    eq = lambda ts: Account(account="a", ts=ts, equity=10_000, maintenance_margin=0)  # noqa: E731
    events = [pos("a", T0, 300, 20), eq(T0 + 1), Heartbeat(ts=T0 + 500),
              pos("a", T0 + 100_000, 1000, 20, symbol="ETH-PERP"), eq(T0 + 100_001), Heartbeat(ts=T0 + 101_000)]
    assert run(events) == []


# -- issue 13 --------------------------------------------------------------------------------
def test_republished_positions_of_a_mixed_leverage_account_are_not_jumps():
    """An account at 20x on BTC and 3x on ETH, its unchanged positions re-sent every minute
    (venues re-publish open positions): nothing, however often; per-symbol history, not one
    blend per account."""
    events = []
    for k in range(12):
        ts = T0 + k * 60_000
        events += [pos("a", ts, 1_500, 20)]  # BTC unchanged, re-sent; ETH traded at its 3x
        events += [pos("a", ts + 10 + j * 15_000, 300 + 10 * j, 3, symbol="ETH-PERP") for j in range(3)]
        events += [Account(account="a", ts=ts + 40_000, equity=20_000, maintenance_margin=800)]
    assert run(events + [Heartbeat(ts=T0 + 800_000)]) == []


def test_levering_up_on_a_symbol_is_judged_against_that_symbol():
    """The same account levering ETH from its 3x to 25x fires, though it uses 20x on BTC."""
    events = [pos("a", T0, 1_500, 20), pos("a", T0 + 10, 300, 3, symbol="ETH-PERP"),
              pos("a", T0 + 90_000, 1_000, 25, symbol="ETH-PERP"), Heartbeat(ts=T0 + 91_000)]
    [a] = run(events)
    assert a.symbol == "ETH-PERP" and "leverage" in a.detail["reasons"]
    assert a.detail["usual_leverage"] == 3.0 and a.detail["usual_leverage_on"] == "symbol"


def test_no_account_rule_before_history_nor_under_the_usd_floor():
    """1.25 s into the stream an account has no history: nothing; a $3k jump is not an alert."""
    early = [pos("a", T0, 100, 3), pos("a", T0 + 1_250, 2_000, 25), Heartbeat(ts=T0 + 2_000)]
    assert run(early) == []
    small = [pos("a", T0, 3, 3), pos("a", T0 + 90_000, 34.4, 25), Heartbeat(ts=T0 + 91_000)]
    assert run(small) == []


def test_a_liquidated_account_is_never_scored_infinite():
    """Equity 0 with nothing left open (after its liquidation): nothing. Equity 0 under open
    positions: reported as such, finite score, on its symbol."""
    start = [pos("a", T0, 600, 20), Account(account="a", ts=T0 + 50_000, equity=5_000, maintenance_margin=300)]
    gone = [pos("a", T0 + 70_000, 0, 20), Account(account="a", ts=T0 + 70_000, equity=0, maintenance_margin=0),
            Heartbeat(ts=T0 + 71_000)]
    assert run(start + gone) == []
    [a] = run(start + [Account(account="a", ts=T0 + 70_000, equity=0, maintenance_margin=300),
                       Heartbeat(ts=T0 + 71_000)])
    assert a.symbol == "BTC-PERP" and a.detail["reasons"] == ["equity_exhausted"] and a.severity == "critical"
    assert a.score < 1e6 and a.detail["margin_ratio"] is None


def test_a_slow_cohort_fires_on_its_level():
    """24 accounts raising leverage on one symbol over five minutes (one every 12.5 s, each under
    the account rules' floor): a symbol-level cohort anomaly once the count and the notional
    raised reach their floors, slow as it built."""
    events = [pos(f"c{i}", T0 + i, 100, 3) for i in range(24)]
    events += [Heartbeat(ts=T0 + k * 1_000) for k in range(1, 120)]
    for i in range(24):
        at = T0 + 120_000 + i * 12_500
        events += [pos(f"c{i}", at, 450, 20)] + [Heartbeat(ts=at + k * 1_000) for k in range(1, 13)]
    sym = [a for a in run(events) if a.account is None]
    assert sym and sym[0].symbol == "BTC-PERP" and sym[0].detail["scope"] == "cohort"
    assert sym[0].detail["accounts_raising"] >= 10 and sym[0].detail["raised_notional"] >= 1_000_000


def test_many_accounts_tripping_on_one_symbol_are_one_anomaly():
    """60 accounts levering up on one symbol over a minute: the first keeps its own anomaly,
    then one symbol-level anomaly with the accounts (top by notional, the count); at most
    three rows in all. An account levering up alone elsewhere keeps its own."""
    events = [pos(f"c{i}", T0 + i, 100, 3) for i in range(60)] + [pos("solo", T0, 100, 3, symbol="ETH-PERP")]
    events += [Heartbeat(ts=T0 + k * 1_000) for k in range(1, 90)]
    for i in range(60):
        events += [pos(f"c{i}", T0 + 90_000 + i * 1_000, 1_000 + 10 * i, 25), Heartbeat(ts=T0 + 90_500 + i * 1_000)]
    events += [pos("solo", T0 + 120_000, 1_000, 25, symbol="ETH-PERP"), Heartbeat(ts=T0 + 200_000)]
    out = run(events)
    btc = [a for a in out if a.symbol == "BTC-PERP"]
    assert len(btc) <= 3 and btc[0].account == "c0"
    folded = [a for a in btc if a.account is None]
    assert folded and folded[-1].detail["accounts"] >= 30
    top = folded[-1].detail["top_accounts"]
    assert len(top) == 10 and top[0]["notional"] >= top[-1]["notional"]
    assert [a.account for a in out if a.symbol == "ETH-PERP"] == ["solo"]


def test_fold_min_below_two_is_refused_naming_the_key():
    import pytest

    from detectors import build_detectors
    from detectors.base import DetectorConfigError
    with pytest.raises(DetectorConfigError) as e:
        build_detectors({"leverage_jump": {"fold_min": 1}})
    assert e.value.key.startswith("detectors.leverage_jump")
