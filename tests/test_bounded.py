"""Issue 11 rows 7-9: bounded by every path (symbols, liquidations, event time, pending work).

Counting tests only: no wall clock anywhere.
"""

from __future__ import annotations

from collections import deque

from detectors import build_detectors
from monitor.events import Liquidation, Order, Trade
from monitor.pipeline import Pipeline
from monitor.state import MarketState

T0 = 1_732_400_000_000


def all_detectors() -> list:
    return build_detectors({})


def state_maps(state: MarketState) -> dict[str, int]:
    g = state.exposure
    return {"books": len(state.books), "marks": len(state.marks), "cross_notional": len(g.cross_notional),
            "collateral": len(g.collateral), "last_liquidation": len(g.last_liquidation), "slots": len(g.slots)}


def test_every_event_type_respects_max_symbols():
    """Row 8: orders, trades and liquidations on 100k new symbols: the state keeps 100, refuses
    (and counts) the rest before any detector sees them; no detector map grows past 100."""
    p = Pipeline(MarketState(max_symbols=100), all_detectors(), tick_ms=250)
    n, sent = 100_000, 0
    for start in range(0, n, 1_000):
        batch = []
        for i in range(start, start + 1_000):
            s, ts = f"X{i}", T0 + i
            batch += [Order(symbol=s, ts=ts, order_id=i, account=f"a{i % 7}", action="cancel", side="buy",
                            price=100.0, size=1.0),
                      Liquidation(symbol=s, ts=ts, side="sell", price=100.0, size=1.0),
                      Trade(symbol=s, ts=ts, price=100.0, size=1.0, side="buy")]
        sent += len(batch)
        p.process(batch)
    p.flush()
    st = p.state
    assert st.rejected_symbols == sent - 3 * 100 == p.refused
    for name, size in state_maps(st).items():
        assert size <= 100, (name, size)
    for d in p.detectors:
        for name, size in d.symbol_maps().items():
            assert size <= 100, (d.name, name, size)
        for name, value in vars(d).items():
            if isinstance(value, (dict, set, list, deque)):
                assert len(value) <= 100, (d.name, name, len(value))


def test_cascade_on_many_symbols_costs_at_most_k_pair_updates_per_liquidation():
    """Row 7: a cascade over 2,000 symbols round-robin within the window: each liquidation
    updates at most K flow pairs, the recent table holds K symbols, the pair map its bound."""
    from monitor.state.exposure import ExposureGraph
    g = ExposureGraph(max_edges=5_000)
    k = getattr(g, "max_flow_sources", 64)
    state = MarketState(exposure=g)
    calls = [0]
    chains = g.chains

    def counted(*a):  # a pair's decayed count is read once per pair update
        calls[0] += 1
        return chains(*a)

    g.chains = counted
    worst = 0
    for i in range(20_000):  # ten rounds of 2,000 symbols, 2 ms apart: all within 60 s
        before, updates = calls[0], getattr(g, "flow_updates", 0)
        assert state.apply(Liquidation(symbol=f"L{i % 2_000}", ts=T0 + 2 * i, side="sell", price=1.0, size=1.0))
        assert calls[0] - before <= k, (i, calls[0] - before)
        worst = max(worst, getattr(g, "flow_updates", 0) - updates)
        assert len(g.last_liquidation) <= k
        assert len(g.flow) <= 5_000
    assert worst == k
    assert len(g._flow_heap) <= 2 * len(g.flow) + 64
    assert g.dropped_edges > 0
    del g.chains
    import pickle
    again = pickle.loads(pickle.dumps(state))
    assert again.exposure.flow == g.flow and list(again.exposure.last_liquidation) == list(g.last_liquidation)


def test_flow_eviction_drops_the_weakest_pair_first():
    """The bounded pair map evicts by decayed count: a strong old chain outlives fresh single ones."""
    from monitor.state.exposure import ExposureGraph
    g = ExposureGraph(max_edges=50, forced_flow_halflife_ms=3_600_000)
    for r in range(20):  # A -> B twenty times
        g.on_liquidation("A", T0 + r * 100_000)
        g.on_liquidation("B", T0 + r * 100_000 + 1_000)
    strong = g.chains("A", "B", T0 + 2_000_000)
    assert strong > 10
    t = T0 + 2_100_000
    for i in range(400):  # fresh pairs, one chain each, far more than the map holds
        g.on_liquidation(f"Z{i}", t + i)
    assert len(g.flow) <= 50
    assert ("A", "B") in g.flow and g.chains("A", "B", t) > 10


# -- row 9: event time cannot be poisoned ------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402

from detectors.leverage_jump import LeverageJump  # noqa: E402
from detectors.thin_book_cluster import ThinBookCluster  # noqa: E402
from monitor.events import Account, Book, Heartbeat, Position  # noqa: E402

TEN_YEARS = 10 * 365 * 86_400_000


def book(ts, seq, snapshot=False):
    return Book(symbol="X", ts=ts, seq=seq, snapshot=snapshot, bids=[(99.0, 1.0)] if snapshot else [],
                asks=[(101.0, 1.0)] if snapshot else [])


def test_a_heartbeat_ten_years_ahead_is_refused_and_the_stuck_book_still_fires():
    p = Pipeline(MarketState(), all_detectors(), tick_ms=250)
    out = p.process([book(T0, 1, snapshot=True), book(T0 + 100, 3)])  # a gap: unreliable
    out += p.process([Heartbeat(ts=T0 + TEN_YEARS)])
    for k in range(1, 200):  # 50 s of normal deltas, still no snapshot
        out += p.process([book(T0 + 100 + 250 * k, 3 + k)])
    stuck = [(a.ts - T0) for a in out if a.kind == "feed_gap" and a.severity == "critical"]
    assert len(stuck) == 1 and 30_000 <= stuck[0] <= 31_000, stuck
    assert p.clock.now < T0 + 60_000
    assert p.refused_future == 1


def test_a_stalled_stream_ticks_from_wall_time_and_late_events_do_not_re_tick():
    """advance_to(wall) runs the same ticks an event would; an event stamped before it later
    is applied but runs no past tick."""
    def run(drive):
        p = Pipeline(MarketState(), all_detectors(), tick_ms=250)
        out = p.process([book(T0, 1, snapshot=True), book(T0 + 100, 3)])
        out += drive(p)
        return p, out
    p1, by_event = run(lambda p: p.process([Heartbeat(ts=T0 + 40_000)]))
    p2, by_wall = run(lambda p: p.advance_to(T0 + 40_000))
    assert by_event == by_wall and p1.clock.now == p2.clock.now
    assert any(a.severity == "critical" for a in by_wall)
    assert p2.process([book(T0 + 39_000, 4), Heartbeat(ts=T0 + 39_500)]) == []  # late: no tick again
    assert p2.clock.now == T0 + 40_000


def test_a_consistent_jump_resyncs_the_clock():
    """A stream that really moved on (a restart from an old checkpoint) is followed after a run."""
    p = Pipeline(MarketState(), all_detectors(), tick_ms=250, resync_after=16)
    p.process([Heartbeat(ts=T0)])
    later = T0 + 86_400_000
    p.process([Heartbeat(ts=later + k) for k in range(15)])
    assert p.clock.now == T0 and p.refused_future == 15
    p.process([Heartbeat(ts=later + 15)])
    assert p.clock.now == later + 15 and p.clock.resyncs == 1
    # interleaved with the live stream, a hostile run never resyncs
    for k in range(100):
        p.process([Heartbeat(ts=later + 100 + k), Heartbeat(ts=later + TEN_YEARS + k)])
    assert p.clock.now < later + 1_000 and p.clock.resyncs == 1


def test_wall_time_guards_even_the_first_event():
    p = Pipeline(MarketState(), all_detectors(), tick_ms=250)
    p.set_wall(T0)
    p.process([Heartbeat(ts=T0 + TEN_YEARS)] * 300 + [Heartbeat(ts=T0 + 10)])
    assert p.clock.now == T0 + 10 and p.refused_future == 300


def test_pending_work_is_bounded_under_a_flood_within_one_tick():
    lj, tb = LeverageJump(max_pending=1_000), ThinBookCluster(max_dirty=500)
    p = Pipeline(MarketState(), [lj, tb], tick_ms=250)
    p.process([Position(account=f"a{i}", symbol="X", ts=T0, size=1.0, entry_price=100.0, leverage=5.0)
               for i in range(20_000)] + [Account(account=f"a{i}", ts=T0, equity=1e4, maintenance_margin=1.0)
                                          for i in range(5_000)])
    assert len(lj._pending) == 1_000 and lj.pending_dropped == 24_000
    assert len(tb._dirty) == 500 and tb.early_recomputes > 0
    for d in (lj, tb):
        for name, (length, cap) in d.bounds().items():
            assert length <= cap, (d.name, name)


ts_steps = hs.lists(hs.one_of(hs.integers(-10_000_000, 10_000_000), hs.integers(-TEN_YEARS, TEN_YEARS),
                              hs.integers(0, 2_000)), min_size=1, max_size=120)


@settings(max_examples=60, deadline=None)
@given(ts_steps, hs.integers(1, 8))
def test_event_time_is_monotone_bounded_and_pending_stays_bounded(steps, resync_after):
    """Whatever the timestamps (huge jumps, regressions): clock.now never goes back, never
    exceeds the largest accepted ts, and every pending map stays within its bound."""
    lj, tb = LeverageJump(max_pending=50), ThinBookCluster(max_dirty=20)
    p = Pipeline(MarketState(), [lj, tb] + all_detectors()[:1], tick_ms=250, max_ahead_ms=60_000,
                 resync_after=resync_after)
    ts, prev_now, accepted_max = T0, 0, 0
    for k, step in enumerate(steps):
        ts = max(ts + step, 1)
        refused = p.refused_future
        ev = (Heartbeat(ts=ts) if k % 3 == 0 else
              Position(account=f"a{k % 97}", symbol="X", ts=ts, size=1.0 + k, entry_price=100.0, leverage=5.0))
        p.process([ev] * (1 + k % 4))
        if p.refused_future == refused or p.refused_future < refused + 1 + k % 4:
            accepted_max = max(accepted_max, ts)
        assert p.clock.now >= prev_now
        assert p.clock.now <= accepted_max
        prev_now = p.clock.now
        for d in (lj, tb):
            for name, (length, cap) in d.bounds().items():
                assert length <= cap, (d.name, name)
