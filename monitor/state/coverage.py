"""Coverage: what a source should give us and does not, as ``coverage`` anomalies.

A risk daemon that cannot see a book must say so, not stay quiet: the book that never
syncs (its REST snapshot refused, say) is the blind spot where a cascade goes unseen.
Checked on event time at the pipeline's ticks (at most once per ``CHECK_EVERY_MS``), from
what each watched codec exposes, all optional (a codec without one is not checked for it):

- ``unsynced() -> {symbol: since_ts}``: books waiting for a snapshot since that event time.
  Waiting ``unsynced_after_ms`` or more: ``reason = "book_not_synced"``, critical, once
  per wait (again after the book synced and lost sync again).
- ``last_seen() -> {(stream, symbol): ts}`` for the streams the venue publishes
  continuously (depth, mark price): a subscribed symbol's stream with nothing for
  ``silent_after_ms`` (never seen: since the source was first watched at a tick):
  ``reason = "stream_silent"``, warning, once per silence. Trades and liquidations are
  not checked: a quiet market is not a fault.
- ``stats.unknown``: a message type the codec does not decode, first seen:
  ``reason = "unknown_message"``, info, once per (source, type), for codecs that set
  ``REPORT_UNKNOWN`` (Binance); the codec's ``IGNORED`` names (kinds it skips on purpose,
  e.g. ``kline``) are counted only, and so is every unknown type of the native protocol,
  which ignores them by contract (CONTRACT section 1).
- ``state.books[symbol].ticker_divergences`` growing: the venue's best bid/ask (Binance
  ``bookTicker`` at the book's own update id) disagreed with our book
  (``reason = "book_ticker_divergence"``, warning, at most once per symbol per
  ``silent_after_ms``).

Pure: no I/O, no wall clock. Bounded: one entry per (source, symbol, stream) the codec
already bounds (``max_symbols``), unknown types bounded by ``DecodeStats`` (256).

>>> class Codec:
...     stats = type("S", (), {"unknown": {}, "dropped": {}})()
...     def unsynced(self): return {"BTCUSDT": 1_732_400_000_000}
>>> cov = Coverage()
>>> cov.watch("binance", Codec(), ["BTCUSDT"], unsynced_after_ms=30_000)
>>> cov.on_tick(1_732_400_010_000)
[]
>>> [(a.kind, a.severity, a.detail["reason"]) for a in cov.on_tick(1_732_400_030_000)]
[('coverage', 'critical', 'book_not_synced')]
>>> cov.on_tick(1_732_400_060_000)  # once per wait
[]
"""

from __future__ import annotations

from typing import Any

from monitor.events import Anomaly

CHECK_EVERY_MS = 1_000
KIND = "coverage"


class _Watched:
    __slots__ = ("source", "codec", "symbols", "streams", "unsynced_after_ms", "silent_after_ms", "since",
                 "reported_unsynced", "silent", "unknown_seen", "divergence_seen", "raised")

    def __init__(self, source: str, codec: Any, symbols: list[str], streams: tuple[str, ...] | None,
                 unsynced_after_ms: int, silent_after_ms: int) -> None:
        self.source = source
        self.codec = codec
        self.symbols = list(symbols)
        self.streams = streams
        self.unsynced_after_ms = unsynced_after_ms
        self.silent_after_ms = silent_after_ms
        self.since: int | None = None  # event time of the first check
        self.reported_unsynced: dict[str, int] = {}  # symbol -> the wait (since_ts) reported
        self.silent: set[tuple[str, str]] = set()  # (stream, symbol) reported and still silent
        self.unknown_seen: set[str] = set()
        self.divergence_seen: dict[str, tuple[int, int]] = {}  # symbol -> (count seen, last report ts)
        self.raised: dict[str, int] = {}  # reason -> anomalies raised (metrics)


class Coverage:
    """The coverage checks over the watched sources; see the module docstring."""

    def __init__(self) -> None:
        self.watched: dict[str, _Watched] = {}
        self._next = 0

    def watch(self, source: str, codec: Any, symbols: list[str] | tuple[str, ...] = (),
              streams: tuple[str, ...] | None = None, *, unsynced_after_ms: int = 30_000,
              silent_after_ms: int = 60_000) -> None:
        """Check ``codec`` (a source's) from now on. ``symbols``: those subscribed (none: the
        symbols the codec has seen); ``streams``: the continuous streams subscribed (None: a
        recording's, i.e. those of ``codec.CONTINUOUS`` seen at least once for some symbol)."""
        self.watched[source] = _Watched(source, codec, list(symbols), streams, unsynced_after_ms, silent_after_ms)

    def raised(self) -> dict[tuple[str, str], int]:
        """(source, reason) -> coverage anomalies raised, for metrics."""
        return {(w.source, r): n for w in self.watched.values() for r, n in w.raised.items()}

    def on_tick(self, now: int, state: Any = None) -> list[Anomaly]:
        if now < self._next or not self.watched:
            return []
        self._next = now + CHECK_EVERY_MS
        out: list[Anomaly] = []
        for w in self.watched.values():
            if w.since is None:
                w.since = now
            self._unsynced(w, now, out)
            self._silent(w, now, out)
            self._unknown(w, now, out)
            self._divergence(w, now, out, state)
        return out

    def _raise(self, w: _Watched, out: list[Anomaly], now: int, score: float, severity: str,
               symbol: str | None, reason: str, **detail: Any) -> None:
        w.raised[reason] = w.raised.get(reason, 0) + 1
        out.append(Anomaly.make(KIND, now, score, severity, symbol=symbol,  # type: ignore[arg-type]
                                detail={"reason": reason, "source": w.source, **detail}))

    def _unsynced(self, w: _Watched, now: int, out: list[Anomaly]) -> None:
        get = getattr(w.codec, "unsynced", None)
        if get is None:
            return
        waiting = get()
        for sym in [s for s in w.reported_unsynced if s not in waiting]:
            del w.reported_unsynced[sym]  # synced since: a later wait is reported again
        for sym, since in waiting.items():
            waited = now - since
            if waited >= w.unsynced_after_ms and w.reported_unsynced.get(sym) != since:
                w.reported_unsynced[sym] = since
                self._raise(w, out, now, waited / 1000.0, "critical", sym, "book_not_synced",
                            waiting_ms=waited, threshold_ms=w.unsynced_after_ms,
                            note="no reliable book: depth-based detection is blind on this symbol")

    def _silent(self, w: _Watched, now: int, out: list[Anomaly]) -> None:
        get = getattr(w.codec, "last_seen", None)
        continuous = getattr(w.codec, "CONTINUOUS", ())
        if get is None or not continuous:
            return
        seen = get()
        if w.streams is not None:
            streams = [s for s in w.streams if s in continuous]
        else:
            streams = sorted({st for st, _ in seen} & set(continuous))
        symbols = w.symbols or sorted({s for _, s in seen})
        for sym in symbols:
            for stream in streams:
                key = (stream, sym)
                last = seen.get(key)
                quiet = now - (last if last is not None else w.since)  # type: ignore[operator]
                if quiet < w.silent_after_ms:
                    w.silent.discard(key)
                elif key not in w.silent:
                    w.silent.add(key)
                    self._raise(w, out, now, quiet / 1000.0, "warning", sym, "stream_silent", stream=stream,
                                silent_ms=quiet, never_seen=last is None, threshold_ms=w.silent_after_ms)

    def _unknown(self, w: _Watched, now: int, out: list[Anomaly]) -> None:
        if not getattr(w.codec, "REPORT_UNKNOWN", False):
            return  # the native protocol ignores unknown types by contract: counted only
        unknown = w.codec.stats.unknown
        if len(unknown) == len(w.unknown_seen):
            return
        ignored = getattr(w.codec, "IGNORED", frozenset())
        for name, n in list(unknown.items()):
            if name not in w.unknown_seen:
                w.unknown_seen.add(name)
                if name not in ignored:
                    self._raise(w, out, now, float(n), "info", None, "unknown_message", type=name, count=n,
                                note="a message kind this codec does not decode: its content is not watched")

    def _divergence(self, w: _Watched, now: int, out: list[Anomaly], state: Any) -> None:
        books = getattr(state, "books", None)
        if not books:
            return
        symbols = w.symbols or list(getattr(w.codec, "books", ()))
        for sym in symbols:
            book = books.get(sym)
            if book is None or not book.ticker_divergences:
                continue
            count, last = w.divergence_seen.get(sym, (0, -(1 << 62)))
            n = book.ticker_divergences
            if n > count and now - last >= w.silent_after_ms:
                w.divergence_seen[sym] = (n, now)
                self._raise(w, out, now, float(n - count), "warning", sym, "book_ticker_divergence",
                            divergences=n - count, checks=book.ticker_checks, sample=book.ticker_sample,
                            note="the venue's best bid/ask disagreed with the book built from depth diffs")
