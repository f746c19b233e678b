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
