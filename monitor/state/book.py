"""An L2 order book per symbol: absolute-size deltas, sequence checks, depth queries.

Updates are O(levels in the message). The best bid/ask are cached and recomputed only
when the best level itself disappears; sorted views for depth queries are built on
demand (at detector ticks, not per event) and cached until the next change.

>>> b = L2Book("BTC-PERP")
>>> b.apply(1, True, [(100.0, 2.0), (99.0, 5.0)], [(101.0, 1.0)])
'snapshot'
>>> b.apply(3, False, [(100.0, 0.0)], [])
'gap'
>>> b.reliable, b.best_bid()
(False, 100.0)
"""

from __future__ import annotations

import math
from typing import Iterable, Literal

Status = Literal["snapshot", "ok", "gap", "ignored"]


class L2Book:
    __slots__ = (
        "symbol", "bids", "asks", "seq", "seq_before_gap", "reliable", "gaps", "crossed", "last_ts",
        "near_bps", "pulled", "pulled_near", "pulled_at", "ticker_checks", "ticker_divergences", "ticker_sample",
        "_best_bid", "_best_ask", "_version", "_sorted_version", "_sorted_bids", "_sorted_asks",
    )

    def __init__(self, symbol: str) -> None:
        self.symbol = symbol
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.seq: int | None = None
        self.seq_before_gap: int | None = None  # the last good seq, for gap reports
        self.reliable = False  # until the first snapshot
        self.gaps = 0
        self.crossed = 0  # levels removed because a newer level crossed them
        self.last_ts = 0
        # Liquidity taken off levels by deltas (cancels and fills alike), as running notional
        # totals; detectors difference them per window to infer cancels on L2-only feeds.
        self.near_bps = 10.0  # "near the touch": within this of the best price on its side
        self.pulled = 0.0
        self.pulled_near = 0.0
        # Per-price size taken off levels since a detector last drained it; None (off, no
        # cost) until a detector that matches decreases against trades at a price asks.
        self.pulled_at: dict[float, float] | None = None
        self.ticker_checks = 0  # venue best bid/ask checked against this book (Binance bookTicker)
        self.ticker_divergences = 0
        self.ticker_sample: dict | None = None  # the last divergence
        self._best_bid: float | None = None
        self._best_ask: float | None = None
        self._version = 0
        self._sorted_version = -1
        self._sorted_bids: list[tuple[float, float]] = []
        self._sorted_asks: list[tuple[float, float]] = []

    # -- updates ---------------------------------------------------------------------
    def apply(
        self,
        seq: int,
        snapshot: bool,
        bids: Iterable[tuple[float, float]],
        asks: Iterable[tuple[float, float]],
    ) -> Status:
        """Apply one book message; returns what it did. A gap leaves the book unreliable."""
        if snapshot:
            self.bids = {p: s for p, s in bids if s > 0}
            self.asks = {p: s for p, s in asks if s > 0}
            self._best_bid = max(self.bids) if self.bids else None
            self._best_ask = min(self.asks) if self.asks else None
            self._uncross_snapshot()
            self.seq = seq
            self.reliable = True
            self._version += 1
            return "snapshot"
        if not self.reliable:
            return "ignored"
        if seq != self.seq + 1:  # type: ignore[operator]
            self.gaps += 1
            self.reliable = False
            self.seq_before_gap = self.seq
            self.seq = seq
            return "gap"
        self.seq = seq
        # _set_bid/_set_ask inlined for the common cases: this loop is the hottest in perpwatch.
        near = self.near_bps / 1e4
        pulled = pulled_near = 0.0
        at = self.pulled_at
        book, bb = self.bids, self._best_bid
        for p, s in bids:
            old = book.get(p)
            if old is not None and s < old:
                pulled += (old - s) * p
                if bb is not None and p >= bb * (1 - near):
                    pulled_near += (old - s) * p
                if at is not None:
                    at[p] = at.get(p, 0.0) + (old - s)
            if s > 0:
                book[p] = s
                if self._best_bid is None or p > self._best_bid:
                    self._set_bid(p, s)
            elif old is not None:
                del book[p]
                if p == self._best_bid:
                    self._best_bid = max(book) if book else None
        book, ba = self.asks, self._best_ask
        for p, s in asks:
            old = book.get(p)
            if old is not None and s < old:
                pulled += (old - s) * p
                if ba is not None and p <= ba * (1 + near):
                    pulled_near += (old - s) * p
                if at is not None:
                    at[p] = at.get(p, 0.0) + (old - s)
            if s > 0:
                book[p] = s
                if self._best_ask is None or p < self._best_ask:
                    self._set_ask(p, s)
            elif old is not None:
                del book[p]
                if p == self._best_ask:
                    self._best_ask = min(book) if book else None
        if pulled:
            self.pulled += pulled
            self.pulled_near += pulled_near
        self._version += 1
        return "ok"

    def _set_bid(self, p: float, s: float) -> None:
        if s > 0:
            self.bids[p] = s
            bb = self._best_bid
            if bb is None or p > bb:
                self._best_bid = p
                ba = self._best_ask
                if ba is not None and p >= ba:
                    self._drop(self.asks, [q for q in self.asks if q <= p])
                    self._best_ask = min(self.asks) if self.asks else None
        elif self.bids.pop(p, None) is not None and p == self._best_bid:
            self._best_bid = max(self.bids) if self.bids else None

    def _set_ask(self, p: float, s: float) -> None:
        if s > 0:
            self.asks[p] = s
            ba = self._best_ask
            if ba is None or p < ba:
                self._best_ask = p
                bb = self._best_bid
                if bb is not None and p <= bb:
                    self._drop(self.bids, [q for q in self.bids if q >= p])
                    self._best_bid = max(self.bids) if self.bids else None
        elif self.asks.pop(p, None) is not None and p == self._best_ask:
            self._best_ask = min(self.asks) if self.asks else None

    def _drop(self, side: dict[float, float], prices: list[float]) -> None:
        """Remove levels a newer level crossed (the newer message is the truth)."""
        for q in prices:
            del side[q]
        self.crossed += len(prices)

    def _uncross_snapshot(self) -> None:
        # A crossed snapshot is a venue bug; trust neither side's crossed levels.
        bb, ba = self._best_bid, self._best_ask
        if bb is not None and ba is not None and bb >= ba:
            mid = (bb + ba) / 2
            self._drop(self.bids, [q for q in self.bids if q >= mid])
            self._drop(self.asks, [q for q in self.asks if q <= mid])
            self._best_bid = max(self.bids) if self.bids else None
            self._best_ask = min(self.asks) if self.asks else None

    def check_quote(self, ts: int, bid: float, ask: float) -> bool:
        """The venue's best bid/ask at this book's update id: True if they agree."""
        self.ticker_checks += 1
        if bid == self._best_bid and ask == self._best_ask:
            return True
        self.ticker_divergences += 1
        self.ticker_sample = {"ts": ts, "venue_bid": bid, "venue_ask": ask, "book_bid": self._best_bid,
                              "book_ask": self._best_ask}
        return False

    # -- queries ---------------------------------------------------------------------
    def best_bid(self) -> float | None:
        return self._best_bid

    def best_ask(self) -> float | None:
        return self._best_ask

    def mid(self) -> float | None:
        bb, ba = self._best_bid, self._best_ask
        if bb is None or ba is None:
            return bb if ba is None else ba
        return (bb + ba) / 2

    def spread_bps(self) -> float | None:
        bb, ba = self._best_bid, self._best_ask
        if bb is None or ba is None:
            return None
        return (ba - bb) / ((ba + bb) / 2) * 1e4

    def sorted_levels(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """(bids best-first, asks best-first), cached until the book changes."""
        if self._sorted_version != self._version:
            self._sorted_bids = sorted(self.bids.items(), reverse=True)
            self._sorted_asks = sorted(self.asks.items())
            self._sorted_version = self._version
        return self._sorted_bids, self._sorted_asks

    def depth_notional(self, side: Literal["bid", "ask"], lo: float, hi: float) -> float:
        """Notional resting on one side at prices within [lo, hi]."""
        levels = self.bids if side == "bid" else self.asks
        return sum(p * s for p, s in levels.items() if lo <= p <= hi)

    def depth_within_bps(self, bps: float, ref: float | None = None) -> tuple[float, float]:
        """(bid notional, ask notional) within +-``bps`` of ``ref`` (default: mid)."""
        ref = ref if ref is not None else self.mid()
        if ref is None:
            return 0.0, 0.0
        lo, hi = ref * (1 - bps / 1e4), ref * (1 + bps / 1e4)
        return self.depth_notional("bid", lo, ref), self.depth_notional("ask", ref, hi)

    def impact_notional(self, side: Literal["buy", "sell"], move_pct: float) -> float:
        """Notional a market order of ``side`` must take to move the touch by ``move_pct``%.

        A buy walks the asks from the best ask up to best_ask * (1 + move_pct/100); the
        notional of the levels strictly inside that range is what stands in the way. If
        the book runs out first, the figure is what the whole side holds (a lower bound).
        """
        bids, asks = self.sorted_levels()
        if side == "buy":
            if not asks:
                return 0.0
            limit = asks[0][0] * (1 + move_pct / 100)
            return _walk(asks, lambda p: p < limit)
        if not bids:
            return 0.0
        limit = bids[0][0] * (1 - move_pct / 100)
        return _walk(bids, lambda p: p > limit)

    def is_crossed(self) -> bool:
        bb, ba = self._best_bid, self._best_ask
        return bb is not None and ba is not None and bb >= ba

    def levels(self) -> int:
        return len(self.bids) + len(self.asks)


def _walk(levels: list[tuple[float, float]], inside) -> float:
    total = 0.0
    for p, s in levels:
        if not inside(p):
            break
        total += p * s
    return total if math.isfinite(total) else 0.0
