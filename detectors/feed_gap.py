"""feed_gap: a book sequence gap, and a book that stays unreliable too long.

A gap means every depth figure for the symbol is untrustworthy until the next snapshot,
so other detectors stay quiet on it (they check ``book.reliable``); this detector is the
one that speaks. A resync that takes longer than ``stuck_after_ms`` of event time is
raised again as critical: the venue (or our feed) is not recovering by itself.

>>> from monitor.events import Book
>>> from monitor.state import MarketState
>>> st, d = MarketState(), FeedGap()
>>> for ev in (Book(symbol="X", ts=1_732_400_000_000, seq=1, snapshot=True, bids=[(9.0, 1.0)]),
...            Book(symbol="X", ts=1_732_400_000_100, seq=4)):
...     st.apply(ev); d.on_event(ev, st)
True
True
>>> [(a.kind, a.severity, a.detail["missing"]) for a in d.on_tick(1_732_400_000_250, st)]
[('feed_gap', 'warning', 2)]
"""

from __future__ import annotations

from detectors.base import Detector, DetectorConfig
from monitor.events import Anomaly, Book
from monitor.state import MarketState


class FeedGapConfig(DetectorConfig, kw_only=True):
    stuck_after_ms: int = 30_000  # a resync still pending after this much event time is critical
    max_pending: int = 10_000  # gaps held between ticks; beyond this they are counted, not kept


class FeedGap(Detector):
    name = "feed_gap"
    Config = FeedGapConfig
    consumes = (Book,)

    def __init__(self, config: FeedGapConfig | None = None) -> None:
        super().__init__(config)
        self._pending: list[Anomaly] = []
        self._open: dict[str, tuple[int, int]] = {}  # symbol -> (gap ts, gap count while open)
        self._stuck_reported: set[str] = set()
        self.overflow = 0

    def symbol_maps(self) -> dict[str, int]:
        return {"open": len(self._open), "stuck_reported": len(self._stuck_reported)}

    def on_event(self, event: Book, state: MarketState) -> None:
        status = state.last_book_status
        sym = event.symbol
        if status == "gap":
            book = state.books[sym]
            expected = book.seq_before_gap + 1
            first_ts, n = self._open.get(sym, (event.ts, 0))
            self._open[sym] = (first_ts, n + 1)
            if len(self._pending) >= self.config.max_pending:
                self.overflow += 1
                return
            self._pending.append(Anomaly.make(
                "feed_gap", event.ts, float(abs(event.seq - expected)), "warning",
                symbol=sym,
                detail={
                    "reason": "sequence gap: book unreliable until the next snapshot",
                    "expected_seq": expected,
                    "got_seq": event.seq,
                    "missing": event.seq - expected,
                    "gaps_on_symbol": book.gaps,
                },
            ))
        elif status == "snapshot" and sym in self._open:
            del self._open[sym]
            self._stuck_reported.discard(sym)

    def flush(self, state: MarketState) -> list[Anomaly]:
        out, self._pending = self._pending, []
        return out

    def on_tick(self, now: int, state: MarketState) -> list[Anomaly]:
        out = self.flush(state)
        limit = self.config.stuck_after_ms
        for sym, (since, n) in self._open.items():
            if now - since >= limit and sym not in self._stuck_reported:
                self._stuck_reported.add(sym)
                out.append(Anomaly.make(
                    "feed_gap", now, (now - since) / 1000.0, "critical", symbol=sym,
                    detail={
                        "reason": "book still unreliable: no snapshot since the gap",
                        "unreliable_for_ms": now - since,
                        "gaps_while_unreliable": n,
                        "threshold_ms": limit,
                    },
                ))
        return out
