"""The L2 book: deltas, gaps, queries; invariants checked with hypothesis."""

from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.state.book import L2Book

prices = st.integers(min_value=90, max_value=110).map(float)
sizes = st.one_of(st.just(0.0), st.integers(min_value=1, max_value=50).map(float))
levels = st.lists(st.tuples(prices, sizes), max_size=6)


class NaiveBook:
    """The reference: plain dicts, everything recomputed, the same uncross rule."""

    def __init__(self):
        self.bids, self.asks = {}, {}

    def set(self, side, p, s):
        book, other = (self.bids, self.asks) if side == "bid" else (self.asks, self.bids)
        if s == 0:
            book.pop(p, None)
            return
        book[p] = s
        for q in list(other):
            if (side == "bid" and q <= p) or (side == "ask" and q >= p):
                del other[q]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(levels, levels), max_size=40))
def test_never_crossed_and_matches_reference(deltas):
    """After any sequence of deltas the book is uncrossed and equals the naive model."""
    book, ref = L2Book("X"), NaiveBook()
    book.apply(1, True, [], [])
    for i, (bids, asks) in enumerate(deltas, start=2):
        assert book.apply(i, False, bids, asks) == "ok"
        for p, s in bids:
            ref.set("bid", p, s)
        for p, s in asks:
            ref.set("ask", p, s)
        assert not book.is_crossed()
        assert book.bids == ref.bids and book.asks == ref.asks
        assert book.best_bid() == (max(ref.bids) if ref.bids else None)
        assert book.best_ask() == (min(ref.asks) if ref.asks else None)


@given(st.integers(min_value=1, max_value=10**9), st.integers(min_value=-5, max_value=50).filter(lambda d: d != 1))
def test_any_gap_is_detected(start, jump):
    """A delta whose seq is not previous + 1 is always a gap, and the book stays unreliable."""
    book = L2Book("X")
    book.apply(start, True, [(100.0, 1.0)], [(101.0, 1.0)])
    assert book.apply(start + jump, False, [(99.0, 1.0)], []) == "gap"
    assert not book.reliable
    assert book.seq_before_gap == start
    assert book.apply(start + jump + 1, False, [(98.0, 1.0)], []) == "ignored"
    assert 99.0 not in book.bids
    assert book.apply(7, True, [(100.0, 1.0)], []) == "snapshot" and book.reliable


def test_deltas_before_first_snapshot_are_ignored():
    """A book is unreliable until its first snapshot."""
    book = L2Book("X")
    assert book.apply(1, False, [(1.0, 1.0)], []) == "ignored"
    assert book.mid() is None


def test_queries():
    """Mid, spread, depth within bps and market-impact notional."""
    book = L2Book("X")
    book.apply(1, True, [(99.0, 1.0), (98.0, 2.0), (90.0, 10.0)], [(101.0, 1.0), (102.0, 3.0), (110.0, 5.0)])
    assert book.mid() == 100.0
    assert round(book.spread_bps(), 6) == 200.0
    bid, ask = book.depth_within_bps(250)  # [97.5, 102.5]
    assert bid == 99.0 + 196.0 and ask == 101.0 + 306.0
    # a buy moving the price by 2% from 101 (to 103.02) takes the 101 and 102 levels
    assert book.impact_notional("buy", 2.0) == 101.0 + 306.0
    assert book.impact_notional("sell", 1.5) == 99.0 + 196.0
    assert book.impact_notional("buy", 100.0) == 101.0 + 306.0 + 550.0  # runs out: whole side


def test_crossed_snapshot_is_repaired():
    """A crossed snapshot (a venue bug) drops the crossed levels on both sides."""
    book = L2Book("X")
    book.apply(1, True, [(101.0, 1.0), (99.0, 1.0)], [(100.0, 1.0), (102.0, 1.0)])
    assert not book.is_crossed()
    assert book.best_bid() == 99.0 and book.best_ask() == 102.0


def test_pulled_liquidity_is_counted_near_and_far():
    """Size taken off levels is counted as notional, and separately near the touch."""
    book = L2Book("X")
    book.near_bps = 100  # 1%
    book.apply(1, True, [(100.0, 5.0), (90.0, 5.0)], [(101.0, 5.0), (120.0, 5.0)])
    book.apply(2, False, [(100.0, 3.0), (90.0, 0.0)], [(101.0, 6.0), (120.0, 1.0)])
    assert book.pulled == 2 * 100.0 + 5 * 90.0 + 4 * 120.0
    assert book.pulled_near == 2 * 100.0
