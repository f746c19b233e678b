"""The what-if engine (issue 14) on hand-built books and positions, answers worked out by hand
(taker fee 0.05%, maintenance 0.4% under $50k of notional: an isolated long at entry 100 and
leverage L liquidates at 100 (1 - 1/L) / 0.9955)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.state.whatif import Position, Snapshot, critical_shock, run


def iso(account: str, symbol: str, size: float, leverage: float, entry: float = 100.0) -> Position:
    return Position(account, symbol, size, entry, leverage, True)


def test_one_round_a_liquidation_walks_the_book_once():
    snap = Snapshot({"X": 100.0}, {"X": ([(99.0, 10.0), (98.0, 10.0), (90.0, 100.0)], [])},
                    [iso("a", "X", 12.0, 20.0)], {})  # liq 95/0.9955 = 95.43
    p = run(snap, "X", -0.05)
    [[r]] = p.rounds
    assert (r.price_before, r.price_after) == (95.0, 90.0)
    assert r.liquidated_notional == pytest.approx(12 * 100.0) and r.depth_consumed == pytest.approx(12 * 90.0)
    assert p.accounts == 1 and p.moves == {"X": pytest.approx(-0.10)} and p.exhausted == []


def test_two_rounds_the_first_liquidations_cross_the_next_prices():
    # round 1: the 20x long (liq 95.43) sells 12 into 94 x5 and 93 x7 -> 93;
    # round 2: the 14x long (liq 100 * (13/14) / 0.9955 = 93.28) is crossed, sells 5 at 93
    snap = Snapshot({"X": 100.0}, {"X": ([(99.0, 10.0), (98.0, 10.0), (94.0, 5.0), (93.0, 100.0)], [])},
                    [iso("a", "X", 12.0, 20.0), iso("b", "X", 5.0, 14.0)], {})
    p = run(snap, "X", -0.05)
    assert [[(r.price_after, round(r.liquidated_notional, 2), round(r.depth_consumed, 2)) for r in rnd]
            for rnd in p.rounds] == [[(93.0, 1200.0, 1121.0)], [(93.0, 500.0, 465.0)]]
    assert p.accounts == 2 and p.liquidated_notional == pytest.approx(1700.0)


def test_cross_collateral_carries_the_shock_to_the_next_symbol():
    # account c (cross, equity 100): long X 10 @ 100 and long Y 10 @ 50. X at 90 leaves it
    # equity 0 < its requirement: both positions are closed; Y's bids 49 x4, 48 x100 -> 48.
    snap = Snapshot({"X": 100.0, "Y": 50.0},
                    {"X": ([(99.0, 1.0), (91.0, 1.0), (85.0, 100.0)], []), "Y": ([(49.0, 4.0), (48.0, 100.0)], [])},
                    [Position("c", "X", 10.0, 100.0, 10.0, False), Position("c", "Y", 10.0, 50.0, 10.0, False)],
                    {"c": 100.0})
    p = run(snap, "X", -0.10)
    per = p.by_symbol()
    assert list(per) == ["X", "Y"] and per["Y"]["cross_accounts"] == 1
    assert per["Y"]["liquidated_notional"] == pytest.approx(500.0) and p.moves["Y"] == pytest.approx(-0.04)
    assert p.moves["X"] == pytest.approx(-0.15)
    assert p.text() == ("-10% on X liquidates $1,000 (1 account), eats $850 of bids, moves -15%; "
                        "1 cross account then sell $500 of Y (-4%)")
    assert run(snap, "X", -0.05).accounts == 0  # equity 50 still covers it


def test_a_deep_book_absorbs_and_a_thin_one_breaks():
    positions = [iso(f"a{i}", "X", 5.0, 20.0 + i) for i in range(20)]  # 20x .. 39x: liq 95.43 .. 97.88
    deep = Snapshot({"X": 100.0}, {"X": ([(99.0 - k * 0.5, 1_000.0) for k in range(30)], [])}, positions, {})
    thin = Snapshot({"X": 100.0}, {"X": ([(99.0 - k * 0.5, 1.0) for k in range(30)], [])}, positions, {})
    absorbed, broken = run(deep, "X", -0.05), run(thin, "X", -0.05)
    assert absorbed.accounts == broken.accounts == 20
    assert not absorbed.sustains() and absorbed.exhausted == []
    assert broken.sustains() and broken.exhausted == ["X"] and broken.moves["X"] == pytest.approx(-0.20)
    shock, path = critical_shock(thin, "X")  # -2% (98) crosses none; -3% (97) the 34x .. 39x longs
    assert shock == -0.03 and path.sustains() and path.accounts >= 6
    assert critical_shock(deep, "X") is None


def test_positions_already_liquidatable_are_left_out_and_counted():
    snap = Snapshot({"X": 90.0}, {"X": ([(89.0, 100.0)], [])}, [iso("a", "X", 1.0, 20.0)], {})  # liq 95.43 > 90
    p = run(snap, "X", -0.01)
    assert p.already_liquidatable == 1 and p.accounts == 0


def test_shorts_liquidate_up_into_the_asks():
    # isolated short 20x at 100: liq = 100 (1 + 1/20) / 1.0045 = 104.53
    snap = Snapshot({"X": 100.0}, {"X": ([], [(101.0, 10.0), (106.0, 3.0), (110.0, 100.0)])},
                    [Position("s", "X", -10.0, 100.0, 20.0, True)], {})
    p = run(snap, "X", 0.05)
    [[r]] = p.rounds
    assert r.price_after == 110.0 and r.depth_consumed == pytest.approx(3 * 106.0 + 7 * 110.0)
    assert p.text().startswith("+5% on X liquidates $1,000 (1 account), eats $1,088 of asks, moves +10%")


books = st.lists(st.tuples(st.floats(80.0, 99.9), st.floats(0.1, 50.0)), min_size=0, max_size=30)
longs = st.lists(st.tuples(st.floats(0.1, 20.0), st.floats(2.0, 100.0)), min_size=0, max_size=30)


def _snap(levels, held, extra_symbol=False) -> Snapshot:
    bids = sorted({round(p, 2): s for p, s in levels}.items(), reverse=True)
    marks = {"X": 100.0, "Z": 10.0} if extra_symbol else {"X": 100.0}
    b = {"X": (bids, [])} | ({"Z": ([(9.9, 1.0)], [(10.1, 1.0)])} if extra_symbol else {})
    return Snapshot(marks, b, [iso(f"a{i}", "X", size, lev) for i, (size, lev) in enumerate(held)], {})


@settings(max_examples=150, deadline=None)
@given(books, longs, st.floats(0.001, 0.15), st.floats(0.001, 0.15))
def test_a_larger_shock_never_liquidates_less(levels, held, s1, s2):
    snap = _snap(levels, held)
    small, large = sorted((s1, s2))
    assert run(snap, "X", -large).liquidated_notional >= run(snap, "X", -small).liquidated_notional - 1e-6
    assert run(snap, "X", -large).accounts >= run(snap, "X", -small).accounts


@settings(max_examples=100, deadline=None)
@given(books, longs, st.floats(-0.15, 0.15), st.randoms())
def test_order_of_positions_does_not_matter_and_a_symbol_without_positions_never_cascades(levels, held, shock, rnd):
    snap = _snap(levels, held, extra_symbol=True)
    shuffled = list(snap.positions)
    rnd.shuffle(shuffled)
    again = Snapshot(snap.marks, snap.books, shuffled, {})
    assert run(snap, "X", shock) == run(again, "X", shock)
    z = run(snap, "Z", shock)
    assert z.accounts == 0 and z.liquidated_notional == 0 and z.rounds == [] and not z.sustains()


def test_an_unknown_symbol_is_a_clear_error():
    with pytest.raises(KeyError, match="no mark and reliable book"):
        run(Snapshot({}, {}, [], {}), "X", -0.01)


def test_snapshot_of_a_live_state(tmp_path):
    """Snapshot.of reads marks, reliable books within the cap, positions and equity."""
    from monitor.events import Account, Book, Mark
    from monitor.events import Position as PositionEvent
    from monitor.state import MarketState

    st_ = MarketState()
    T = 1_732_400_000_000
    for ev in (Book(symbol="X", ts=T, seq=1, snapshot=True, bids=[(99.0, 10.0), (50.0, 1.0)], asks=[(101.0, 5.0)]),
               Mark(symbol="X", ts=T, mark=100.0, index=100.0),
               PositionEvent(account="a", symbol="X", ts=T, size=12.0, entry_price=100.0, leverage=20.0,
                             margin_mode="isolated"),
               Account(account="c", ts=T, equity=100.0)):
        st_.apply(ev)
    snap = Snapshot.of(st_)
    assert snap.marks == {"X": 100.0} and snap.books["X"] == ([(99.0, 10.0)], [(101.0, 5.0)])  # 50 is past the cap
    assert snap.positions == [Position("a", "X", 12.0, 100.0, 20.0, True)] and snap.equity == {"c": 100.0}
    random.seed(0)


def test_whatif_cli_on_a_recorded_cascade_before_its_first_forced_liquidation(tmp_path):
    """`perpwatch whatif --recording` replays to a point in event time: a minute before the
    cascade scenario's first forced liquidation its symbols' critical shock is small, and
    the answer leads with the path; bad input is one line and exit 2."""
    import json

    from tests.support import perpwatch

    rec = tmp_path / "c.jsonl"
    assert perpwatch("simulate", "--scenario", "cascade", "--speed", "0", "--record", str(rec),
                     "--seconds", "400").returncode == 0
    label = json.loads((tmp_path / "c.jsonl.labels.json").read_text())[0]
    cfg = tmp_path / "pw.toml"
    cfg.write_text(f'[store]\npath = "{tmp_path / "pw.db"}"\n')
    at = str(label["first_liquidation_ts"] - 60_000)
    r = perpwatch("whatif", "--config", str(cfg), "--recording", str(rec), "--at", at, "--symbol", label["symbol"],
                  "--shock", "-2%", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["event_time_ms"] >= int(at) and out["liquidated_notional"] > 0
    assert out["critical_shock"] is not None and abs(out["critical_shock"]) <= 0.02
    assert out["text"].startswith(f"-2% on {label['symbol']} liquidates $")
    human = perpwatch("whatif", "--config", str(cfg), "--recording", str(rec), "--at", at, "--symbol",
                      label["symbol"], "--shock", "-2%")
    assert human.returncode == 0 and "critical shock: -" in human.stdout
    bad = perpwatch("whatif", "--config", str(cfg), "--recording", str(rec), "--symbol", "NOPE", "--shock", "-2%")
    assert bad.returncode == 2 and "--symbol: 'NOPE' has no mark" in bad.stderr and "Traceback" not in bad.stderr
    bad = perpwatch("whatif", "--config", str(cfg), "--recording", str(rec), "--symbol", "X", "--shock", "two")
    assert bad.returncode == 2 and "--shock" in bad.stderr
    none = perpwatch("whatif", "--config", str(cfg), "--symbol", "X", "--shock", "-1%")
    assert none.returncode == 1 and "no usable checkpoint" in none.stderr
