"""leverage_jump: the rules the brief adds — scoring only at ticks, warm-up, benign surge, OI-weighted leverage."""

import random

import pytest

from detectors.leverage_jump import LeverageJump, LeverageJumpConfig
from monitor.events import Account, Heartbeat, Mark, Position
from monitor.pipeline import Pipeline
from monitor.state import MarketState
from tests.streams import T0

SYM = "BTC-PERP"


def market(seconds=300, cohort_at=None, surge=None, jump_at=None, n=400, seed=7):
    """``n`` accounts, each with a usual leverage it keeps (2-10x); ~2 position changes a second
    at that usual leverage (positions of $5k-15k). ``cohort_at``: 30 accounts go to 25x ($40k each:
    under the account rules' floor, $1.2M together) within 15 s from that second.
    ``surge`` = (start, end): three times the churn. ``jump_at``: account u-0 goes 3x -> 30x."""
    rng = random.Random(seed)
    usual = {f"u-{i}": (3.0 if i == 0 else rng.choice((2.0, 3.0, 5.0, 10.0))) for i in range(n)}
    ev = []
    for i, (a, lev) in enumerate(usual.items()):
        ev.append(Account(account=a, ts=T0 + i, equity=10_000.0, maintenance_margin=100.0))
        ev.append(Position(account=a, symbol=SYM, ts=T0 + i, size=10.0, entry_price=1_000.0, leverage=lev))
    names = list(usual)
    for step in range(1, seconds * 4):
        ts = T0 + step * 250
        t = step / 4
        rate = 1.5 if surge and surge[0] <= t < surge[1] else 0.5
        for _ in range(int(rate) + (rng.random() < rate % 1)):
            a = rng.choice(names[1:])
            ev.append(Position(account=a, symbol=SYM, ts=ts, size=rng.uniform(5, 15), entry_price=1_000.0,
                               leverage=usual[a]))
        if cohort_at is not None and cohort_at <= t < cohort_at + 15 and step % 2 == 0:
            a = names[1 + int((t - cohort_at) * 2)]
            ev.append(Position(account=a, symbol=SYM, ts=ts + 1, size=40.0, entry_price=1_000.0, leverage=25.0))
        if jump_at is not None and jump_at <= t < jump_at + 0.25:
            ev.append(Position(account="u-0", symbol=SYM, ts=ts + 2, size=2_000.0, entry_price=1_000.0, leverage=30.0))
        if step % 4 == 0:
            ev.append(Mark(symbol=SYM, ts=ts + 3, mark=1_000.0, index=1_000.0, open_interest=5_000.0))
    return ev


def run(events, **cfg):
    d = LeverageJump(LeverageJumpConfig(**cfg))
    p = Pipeline(MarketState(), [d], tick_ms=250)
    return p.process(events) + p.flush(), d, p


def test_cohort_fires_once_with_evidence():
    """30 accounts going to 25x within 15 s: one episode (re-fired only as it doubles, then turns critical)."""
    out, _, _ = run(market(cohort_at=200))
    cohort = [a for a in out if a.detail["scope"] == "cohort"]
    assert 1 <= len(cohort) <= 3
    assert all(b.score >= 2 * a.score or b.severity == "critical" != a.severity for a, b in zip(cohort, cohort[1:]))
    assert cohort[-1].severity == "critical" and cohort[-1].detail["accounts_raising"] >= 30
    c = cohort[0]
    assert c.symbol == SYM and T0 + 200_000 <= c.ts <= T0 + 216_000
    d = c.detail
    assert d["accounts_raising"] >= 10 and d["z"] >= 4 and d["top_raisers"][0]["to"] == 25.0
    assert d["oi_weighted_leverage"] > d["oi_weighted_leverage_baseline"]["mean"]
    assert d["venue_open_interest"] == 5_000.0


def test_cohort_silent_during_warm_up():
    """The same cohort before warmup_ticks of event time: nothing."""
    out, _, _ = run(market(cohort_at=20, seconds=50))
    assert [a for a in out if a.detail["scope"] == "cohort"] == []


def test_silent_without_anomaly_and_on_benign_3x_surge():
    """Churn at each account's usual leverage raises nothing, even at three times the rate."""
    assert run(market())[0] == []
    assert run(market(surge=(150, 210)))[0] == []


def test_account_jump_is_scored_at_the_tick_and_stamped_with_its_event():
    """on_event only records; the jump comes out of the next tick, with the position's event time."""
    events = market(jump_at=150, seconds=151)
    d, st = LeverageJump(), MarketState()
    for e in events:
        st.apply(e)
        if type(e) in d.consumes:
            assert d.on_event(e, st) is None
    out = d.on_tick(T0 + 151_000, st)
    [a] = [x for x in out if x.account == "u-0"]
    assert a.ts == T0 + 150_002 and set(a.detail["reasons"]) == {"leverage", "notional"}
    assert a.detail["usual_leverage"] == pytest.approx(3.0)


def test_oi_weighted_leverage_is_kept_incrementally():
    """The incremental OI-weighted sums equal a recomputation from the positions held."""
    _, d, p = run(market(cohort_at=200, seconds=260))
    s = d._syms[SYM]
    held = [pos for acct in p.state.accounts.accounts.values() for sym, pos in acct.positions.items() if sym == SYM]
    w = sum(x.notional() for x in held)
    assert s.oi_w == pytest.approx(w, rel=1e-9)
    assert s.oi_wl / s.oi_w == pytest.approx(sum(x.notional() * x.leverage for x in held) / w, rel=1e-9)


def test_margin_ratio_anomaly_is_stamped_with_its_event():
    """The margin-ratio rule also waits for the tick and keeps the account event's time."""
    out, _, _ = run([Position(account="a", symbol=SYM, ts=T0, size=100.0, entry_price=1_000.0, leverage=5.0),
                     Account(account="a", ts=T0 + 50_000, equity=1000, maintenance_margin=300),
                     Account(account="a", ts=T0 + 70_001, equity=400, maintenance_margin=390),
                     Heartbeat(ts=T0 + 71_000)])
    [a] = out
    assert a.ts == T0 + 70_001 and a.severity == "critical" and a.detail["margin_ratio_before"] == 0.3
