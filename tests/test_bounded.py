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
