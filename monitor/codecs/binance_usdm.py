"""Binance USD-M futures market streams (``format = "binance-usdm"``).

Frames come from the combined endpoint (``{"stream": "...", "data": {...}}``) or a raw
stream (the payload alone); both decode. The payload is a tagged union on ``e``, so the
common frame costs one msgspec call; only a frame that fails it is probed again to tell
an unknown kind (counted in ``stats.unknown``) from a broken one (``stats.dropped``).

Mapping (every ``ts`` is the event time ``E``, in ms):

- ``depthUpdate`` -> ``Book`` deltas, through one :class:`BinanceDepthSync` per symbol
  (the venue's documented buffer / REST snapshot / ``pu`` chain procedure).
- ``aggTrade`` -> ``Trade``; ``m`` true means the buyer was the maker, so the taker sold.
  ``trade`` (the raw stream, as hftbacktest records it) -> ``Trade`` the same way, for
  ``X = MARKET`` prints (others counted by type). Subscribe one of the two, not both:
  the same fills would count twice.
- ``bookTicker`` -> ``Quote`` when the book stands at the ticker's update id ``u`` (the
  last applied diff's ``u``): the state checks our best bid/ask against the venue's and
  counts a divergence (reported as ``coverage``); at other moments nothing is emitted.
- ``forceOrder`` -> ``Liquidation`` (side of the forced order: ``SELL`` closes a long)
  plus ``Trade(liquidation=True)``, the forced order being the taker. Binance pushes at
  most the latest liquidation per symbol per second, so this flow is a lower bound of
  what was liquidated; detectors must say so, the codec cannot know what it missed.
  The forced order's fills also print in ``aggTrade`` (unflagged), so summing trade
  volume across both double-counts the liquidation part.
- ``markPriceUpdate`` -> ``Mark`` (``p`` mark, ``i`` index, ``r`` funding rate);
  ``!markPrice@arr`` frames (a list of them) decode too.
- ``kline`` (skipped on purpose, see ``IGNORED``) and anything else: counted in
  ``stats.unknown`` by kind.
  Subscription replies (``{"result": null, "id": 1}``) count as ``unknown["control"]``;
  a venue ``error`` reply is a drop, because it means a subscription did not happen.

Symbols keep venue naming (``SUSHIUSDT``).

>>> c = BinanceUsdmCodec()
>>> frame = ('{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":1626992741037,'
...          '"T":1626992741024,"s":"BTCUSDT","U":100,"u":110,"pu":90,'
...          '"b":[["30000.5","2"]],"a":[["30001","0"]]}}')
>>> c.decode(frame)  # buffered until a REST snapshot is supplied
[]
>>> c.needs_snapshot()
{'BTCUSDT'}
>>> for ev in c.on_snapshot("BTCUSDT", 105, [["30000", "1"]], [["30001", "3"]], 1626992741000):
...     print(ev)
Book(symbol='BTCUSDT', ts=1626992741000, seq=1, snapshot=True, bids=[(30000.0, 1.0)], asks=[(30001.0, 3.0)])
Book(symbol='BTCUSDT', ts=1626992741037, seq=2, snapshot=False, bids=[(30000.5, 2.0)], asks=[(30001.0, 0.0)])
>>> c.needs_snapshot()
set()
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Iterable, Literal, Union
from urllib.parse import quote

import msgspec

from monitor.codecs import DecodeStats
from monitor.events import Book, Event, Level, Liquidation, Mark, Price, Quote, Size, Symbol, Trade, Ts

DEPTH_SPEEDS = {"100ms": "@depth@100ms", "250ms": "@depth", "500ms": "@depth@500ms"}
DEFAULT_BUFFER = 1000
MAX_SYMBOLS = 10_000  # per-symbol book state kept; the venue lists ~400 USD-M symbols


# -- venue payloads ------------------------------------------------------------------
# Field names are the venue's one-letter keys, renamed to say what they hold. msgspec
# converts the decimal strings to floats (strict=False) and the events.py constraints
# (finite, positive prices, plausible ms timestamps) are checked during that same pass.
_PAYLOAD = dict(tag_field="e", gc=False)


class DepthUpdate(msgspec.Struct, tag="depthUpdate", **_PAYLOAD):
    symbol: Symbol = msgspec.field(name="s")
    ts: Ts = msgspec.field(name="E")
    first_id: int = msgspec.field(name="U")
    final_id: int = msgspec.field(name="u")
    prev_final_id: int = msgspec.field(name="pu")
    bids: list[Level] = msgspec.field(name="b", default_factory=list)
    asks: list[Level] = msgspec.field(name="a", default_factory=list)


class AggTrade(msgspec.Struct, tag="aggTrade", **_PAYLOAD):
    symbol: Symbol = msgspec.field(name="s")
    ts: Ts = msgspec.field(name="E")
    price: Price = msgspec.field(name="p")
    size: Size = msgspec.field(name="q")
    buyer_is_maker: bool = msgspec.field(name="m")


class _ForcedOrder(msgspec.Struct, gc=False):
    symbol: Symbol = msgspec.field(name="s")
    side: Literal["BUY", "SELL"] = msgspec.field(name="S")
    price: Size = msgspec.field(name="p", default=0.0)
    avg_price: Size = msgspec.field(name="ap", default=0.0)
    qty: Size = msgspec.field(name="q", default=0.0)
    filled: Size = msgspec.field(name="z", default=0.0)


class ForceOrder(msgspec.Struct, tag="forceOrder", **_PAYLOAD):
    ts: Ts = msgspec.field(name="E")
    order: _ForcedOrder = msgspec.field(name="o")


class MarkPriceUpdate(msgspec.Struct, tag="markPriceUpdate", **_PAYLOAD):
    symbol: Symbol = msgspec.field(name="s")
    ts: Ts = msgspec.field(name="E")
    mark: Price = msgspec.field(name="p")
    index: Price = msgspec.field(name="i")
    # A string, not a float: delivery contracts send "" here, which is "no rate", not an error.
    funding_rate: str = msgspec.field(name="r", default="")


class RawTrade(msgspec.Struct, tag="trade", **_PAYLOAD):
    symbol: Symbol = msgspec.field(name="s")
    ts: Ts = msgspec.field(name="E")
    price: Price = msgspec.field(name="p")
    size: Size = msgspec.field(name="q")
    buyer_is_maker: bool = msgspec.field(name="m")
    order_type: str = msgspec.field(name="X", default="MARKET")


class BookTicker(msgspec.Struct, tag="bookTicker", **_PAYLOAD):
    symbol: Symbol = msgspec.field(name="s")
    ts: Ts = msgspec.field(name="E")
    update_id: int = msgspec.field(name="u")
    bid: float = msgspec.field(name="b")
    ask: float = msgspec.field(name="a")


class _Kline(msgspec.Struct, tag="kline", **_PAYLOAD):
    pass


Payload = Union[DepthUpdate, AggTrade, RawTrade, ForceOrder, MarkPriceUpdate, BookTicker, _Kline]
_KNOWN_KINDS = frozenset(t.__struct_config__.tag for t in Payload.__args__)  # type: ignore[attr-defined]


class _Envelope(msgspec.Struct, gc=False):
    stream: str = ""
    data: Union[Payload, list[Payload], None] = None


class _ProbeData(msgspec.Struct):
    e: str = ""


class _Probe(msgspec.Struct):
    stream: str = ""
    data: Union[_ProbeData, list[_ProbeData], None] = None
    e: str = ""
    id: Any = None
    result: Any = None
    error: Any = None


class _RestDepth(msgspec.Struct, gc=False):
    last_update_id: int = msgspec.field(name="lastUpdateId")
    bids: list[Level] = []
    asks: list[Level] = []
    ts: Union[Ts, None] = msgspec.field(name="E", default=None)


_envelope = msgspec.json.Decoder(_Envelope, strict=False)
_payload = msgspec.json.Decoder(Union[Payload, list[Payload]], strict=False)
_probe = msgspec.json.Decoder(_Probe)
_rest_depth = msgspec.json.Decoder(_RestDepth, strict=False)
_ERRORS = (msgspec.ValidationError, msgspec.DecodeError)


# -- depth synchronisation -----------------------------------------------------------
_WAIT, _FIRST, _LIVE = "wait", "first", "live"


class BinanceDepthSync:
    """Binance's documented local-book procedure for one symbol, as a pure state machine.

    States: ``wait`` (buffering diffs until a REST snapshot), ``first`` (snapshot
    applied, waiting for the diff that bridges it: ``U <= lastUpdateId <= u``), ``live``
    (each diff's ``pu`` must equal the previous ``u``). Binance update ids are not
    contiguous per symbol, so our ``Book.seq`` is synthesized: +1 per applied message,
    +2 on a broken chain so that :class:`~monitor.state.book.L2Book` reports the gap.
    After a gap the diffs are buffered again (the breaking one included) until the next
    snapshot. The buffer keeps the newest ``max_buffer`` diffs: the oldest are the ones
    a fresh snapshot makes obsolete anyway; overflow is counted.

    >>> s = BinanceDepthSync("X")
    >>> s.on_depth(DepthUpdate("X", 1626992741037, 10, 20, 5))
    []
    >>> [(b.seq, b.snapshot) for b in s.on_snapshot(15, [], [], 1626992741000)]
    [(1, True), (2, False)]
    >>> [b.seq for b in s.on_depth(DepthUpdate("X", 1626992741137, 30, 40, 25))]  # pu != 20
    [4]
    >>> s.needs_snapshot, s.gaps
    (True, 1)
    """

    __slots__ = ("symbol", "state", "seq", "last_final", "snapshot_id", "buffer", "max_buffer",
                 "overflow", "gaps", "discarded", "stale_snapshots", "_stats", "waiting_since", "last_ts")

    def __init__(self, symbol: str, max_buffer: int = DEFAULT_BUFFER, stats: DecodeStats | None = None) -> None:
        self.symbol = symbol
        self.state = _WAIT
        self.seq = 0
        self.last_final: int | None = None  # u of the last applied diff
        self.snapshot_id: int | None = None  # lastUpdateId of the current snapshot
        self.buffer: deque[DepthUpdate] = deque()
        self.max_buffer = max_buffer
        self.overflow = 0  # diffs pushed out of a full buffer
        self.gaps = 0
        self.discarded = 0  # diffs older than the snapshot (normal, not an error)
        self.stale_snapshots = 0  # snapshots refused because diffs after them were lost
        self._stats = stats if stats is not None else DecodeStats()
        self.waiting_since: int | None = None  # event time this book started waiting to (re)sync
        self.last_ts = 0  # event time of the last diff seen, applied or buffered

    @property
    def needs_snapshot(self) -> bool:
        return self.state == _WAIT

    def on_depth(self, m: DepthUpdate) -> list[Book]:
        state = self.state
        self.last_ts = m.ts
        if state == _LIVE:
            if m.prev_final_id != self.last_final:
                return self._gap(m)
        elif state == _WAIT:
            self._buffer(m)
            return []
        else:  # _FIRST
            if m.final_id < self.snapshot_id:  # type: ignore[operator]
                self.discarded += 1
                return []
            if m.first_id > self.snapshot_id:  # type: ignore[operator]
                return self._gap(m)  # the diff bridging the snapshot was lost
            self.state = _LIVE
            self.waiting_since = None
        self.last_final = m.final_id
        self.seq += 1
        return [Book(self.symbol, m.ts, self.seq, False, m.bids, m.asks)]

    def on_snapshot(self, last_update_id: int, bids: list[Level], asks: list[Level], ts: int) -> list[Book]:
        """Apply a REST snapshot; returns it as a ``Book`` plus the buffered diffs it bridges.

        Returns ``[]`` (and keeps waiting) when the snapshot is older than what it would
        have to join: the first buffered diff after it starts past ``lastUpdateId``, or
        the live chain has already moved beyond it.
        """
        if self.state == _LIVE and last_update_id < self.last_final:  # type: ignore[operator]
            self.stale_snapshots += 1
            return []
        pending = [m for m in self.buffer if m.final_id >= last_update_id]
        self.discarded += len(self.buffer) - len(pending)
        if pending and pending[0].first_id > last_update_id:
            self.stale_snapshots += 1
            self.buffer = deque(pending)
            return []
        self.buffer = deque()
        self.state = _FIRST
        self.snapshot_id = last_update_id
        self.seq += 1
        out = [Book(self.symbol, ts, self.seq, True, bids, asks)]
        for m in pending:
            out.extend(self.on_depth(m))
        return out

    def _gap(self, m: DepthUpdate) -> list[Book]:
        self.gaps += 1
        self.state = _WAIT
        self.waiting_since = m.ts
        self.buffer.clear()
        self._buffer(m)  # the next snapshot may land inside this diff's [U, u]
        self.last_final = m.final_id
        self.seq += 2
        return [Book(self.symbol, m.ts, self.seq, False, m.bids, m.asks)]

    def _buffer(self, m: DepthUpdate) -> None:
        if self.waiting_since is None:
            self.waiting_since = m.ts
        if len(self.buffer) >= self.max_buffer:
            self.buffer.popleft()
            self.overflow += 1
            self._stats.dropped["depth_buffer_overflow"] += 1
        self.buffer.append(m)


# -- the codec -----------------------------------------------------------------------
class BinanceUsdmCodec:
    """Decoder for ``format = "binance-usdm"``; see the module docstring for the mapping.

    The session layer owns the I/O: after each frame it may look at
    :meth:`needs_snapshot`, fetch ``snapshot_url(...)`` and hand the body to
    :meth:`on_rest_snapshot` (or parsed levels to :meth:`on_snapshot`), then forward
    the returned events like any decoded ones.
    """

    # Streams the venue publishes continuously (coverage: silence there is a fault), and the
    # message kinds skipped on purpose (counted, not reported as coverage).
    CONTINUOUS = ("depth", "markPrice")
    IGNORED = frozenset({"kline", "control"})
    REPORT_UNKNOWN = True

    def __init__(self, max_buffer: int = DEFAULT_BUFFER, max_symbols: int = MAX_SYMBOLS) -> None:
        self.stats = DecodeStats()
        self.mark_ts: dict[str, int] = {}  # symbol -> event time of its last mark (bounded like books)
        self.max_buffer = max_buffer
        self.max_symbols = max_symbols  # books beyond this are refused (too_many_symbols), not grown
        self.books: dict[str, BinanceDepthSync] = {}
        self._handlers = {
            DepthUpdate: self._depth,
            AggTrade: self._agg_trade,
            ForceOrder: self._force_order,
            MarkPriceUpdate: self._mark,
            RawTrade: self._raw_trade,
            BookTicker: self._book_ticker,
            _Kline: self._ignored,
        }

    # -- frames ----------------------------------------------------------------------
    def decode(self, frame: bytes | str) -> list[Event]:
        stats = self.stats
        stats.frames += 1
        try:
            try:
                msg = _envelope.decode(frame).data
                if msg is None:  # a raw-stream payload, or a control reply (probed below)
                    msg = _payload.decode(frame)
            except _ERRORS as e:
                self._classify(frame, e)
                return []
            if type(msg) is list:
                out: list[Event] = []
                for m in msg:
                    out.extend(self._handlers[type(m)](m))
            else:
                out = self._handlers[type(msg)](msg)
        except Exception as e:  # never raise on input: RecursionError, UnicodeEncodeError...
            stats.failed(frame, e)
            return []
        stats.events += len(out)
        return out

    def _classify(self, frame: bytes | str, err: Exception) -> None:
        try:
            p = _probe.decode(frame)
        except _ERRORS:
            self.stats.drop("malformed_frame", frame, str(err))
            return
        data = p.data[0] if isinstance(p.data, list) and p.data else p.data
        kind = data.e if isinstance(data, _ProbeData) else p.e
        if kind and kind not in _KNOWN_KINDS:
            self.stats.count_unknown(kind)
        elif not kind and p.error is not None:
            self.stats.drop("venue_error", frame)
        elif not kind and p.data is None and p.id is not None:
            self.stats.count_unknown("control")
        else:
            self.stats.drop("invalid_event", frame, str(err))

    def _ignored(self, m: _Kline) -> list[Event]:
        self.stats.count_unknown(m.__struct_config__.tag)
        return []

    def _depth(self, m: DepthUpdate) -> list[Event]:
        sync = self.books.get(m.symbol) or self._new_book(m.symbol)
        return [] if sync is None else sync.on_depth(m)  # type: ignore[return-value]

    def _new_book(self, symbol: str) -> BinanceDepthSync | None:
        """A book for a symbol first seen; None (counted) past ``max_symbols``: each one
        buffers up to ``max_buffer`` diffs, so a feed inventing symbols must not grow them."""
        if len(self.books) >= self.max_symbols:
            self.stats.dropped["too_many_symbols"] += 1
            return None
        sync = self.books[symbol] = BinanceDepthSync(symbol, self.max_buffer, self.stats)
        return sync

    def _agg_trade(self, m: AggTrade) -> list[Event]:
        return [Trade(m.symbol, m.ts, m.price, m.size, "sell" if m.buyer_is_maker else "buy")]

    def _raw_trade(self, m: RawTrade) -> list[Event]:
        if m.order_type != "MARKET":  # INSURANCE_FUND / ADL prints: counted by type, not a taker's trade
            self.stats.count_unknown(f"trade:{m.order_type}")
            return []
        return [Trade(m.symbol, m.ts, m.price, m.size, "sell" if m.buyer_is_maker else "buy")]

    def _book_ticker(self, m: BookTicker) -> list[Event]:
        """A Quote only when our book stands at exactly the ticker's update id (the last
        applied diff's ``u``): then both must show the same best bid/ask. Otherwise the two
        streams are simply at different moments and nothing is compared."""
        sync = self.books.get(m.symbol)
        if sync is None or sync.state != _LIVE or sync.last_final != m.update_id:
            return []
        return [Quote(m.symbol, m.ts, m.bid, m.ask)]

    def _force_order(self, m: ForceOrder) -> list[Event]:
        o = m.order
        price = o.avg_price or o.price
        size = o.filled or o.qty
        if price <= 0:
            self.stats.drop("invalid_event", msgspec.json.encode(m), "forceOrder without a price")
            return []
        side = "sell" if o.side == "SELL" else "buy"
        return [Liquidation(o.symbol, m.ts, side, price, size), Trade(o.symbol, m.ts, price, size, side, True)]

    def _mark(self, m: MarkPriceUpdate) -> list[Event]:
        if m.symbol in self.mark_ts or len(self.mark_ts) < self.max_symbols:
            self.mark_ts[m.symbol] = m.ts
        return [Mark(m.symbol, m.ts, m.mark, m.index, funding_rate=_rate(m.funding_rate))]

    # -- coverage (monitor.state.coverage reads these at ticks, never per event) ---------
    def unsynced(self) -> dict[str, int]:
        """Symbols whose book is not (yet, or no longer) in sync -> since when (event time)."""
        return {s: b.waiting_since for s, b in self.books.items() if b.state != _LIVE and b.waiting_since is not None}

    def last_seen(self) -> dict[tuple[str, str], int]:
        """(stream, symbol) -> event time of its last message, for the CONTINUOUS streams."""
        out = {("depth", s): b.last_ts for s, b in self.books.items()}
        out.update((("markPrice", s), ts) for s, ts in self.mark_ts.items())
        return out

    # -- book synchronisation ----------------------------------------------------------
    def needs_snapshot(self) -> set[str]:
        """Symbols whose book waits for a REST snapshot (first sight, or after a gap)."""
        return {s for s, sync in self.books.items() if sync.state == _WAIT}

    def on_snapshot(
        self,
        symbol: str,
        last_update_id: int,
        bids: Iterable[Iterable[Any]],
        asks: Iterable[Iterable[Any]],
        ts: int,
    ) -> list[Event]:
        """Feed a REST depth snapshot (levels as strings or numbers); returns the events.

        Invalid levels or ``ts`` are a drop (``invalid_snapshot``): the symbol keeps
        waiting, nothing raises.
        """
        try:
            b = msgspec.convert(bids, list[Level], strict=False)
            a = msgspec.convert(asks, list[Level], strict=False)
            t = msgspec.convert(ts, Ts)
            lid = msgspec.convert(last_update_id, int)
        except Exception as e:  # ValidationError, RecursionError...: never raise on input
            self.stats.drop("invalid_snapshot", f"{symbol[:64]} {last_update_id}"[:200], f"{type(e).__name__}: {e}")
            return []
        return self._apply_snapshot(symbol, lid, b, a, t)

    def on_rest_snapshot(self, symbol: str | None, body: bytes | str, ts: int | None = None) -> list[Event]:
        """Feed the raw body of ``GET /fapi/v1/depth``; ``ts`` defaults to its ``E``.

        ``symbol`` None (a recording that kept the body alone, as hftbacktest's collector
        does): the snapshot goes to the waiting book whose buffered diffs span its
        ``lastUpdateId`` (update ids are per symbol and far apart), else to the only book
        waiting; otherwise it is dropped as ``snapshot_unmatched``.
        """
        try:
            snap = _rest_depth.decode(body)
        except Exception as e:  # msgspec errors, RecursionError...: never raise on input
            self.stats.drop("invalid_snapshot", body, f"{type(e).__name__}: {e}")
            return []
        t = ts if ts is not None else snap.ts
        if t is None:
            self.stats.drop("invalid_snapshot", body, "no event time")
            return []
        if symbol is None:
            symbol = self._match(snap.last_update_id)
            if symbol is None:
                self.stats.drop("snapshot_unmatched", body, "no waiting book it could belong to")
                return []
        return self.on_snapshot(symbol, snap.last_update_id, snap.bids, snap.asks, t)

    def _match(self, lid: int) -> str | None:
        waiting = [(s, b) for s, b in self.books.items() if b.state == _WAIT]
        spanning = [s for s, b in waiting if b.buffer and b.buffer[0].first_id <= lid <= b.buffer[-1].final_id]
        if len(spanning) == 1:
            return spanning[0]
        return waiting[0][0] if len(waiting) == 1 else None

    def _apply_snapshot(self, symbol: str, lid: int, bids: list[Level], asks: list[Level], ts: int) -> list[Event]:
        sync = self.books.get(symbol) or self._new_book(symbol)
        if sync is None:
            return []
        before = sync.stale_snapshots
        out: list[Event] = sync.on_snapshot(lid, bids, asks, ts)  # type: ignore[assignment]
        if sync.stale_snapshots != before:
            self.stats.dropped["stale_snapshot"] += 1
        self.stats.events += len(out)
        return out

    # -- session helpers (pure: they build strings and dicts) --------------------------
    @staticmethod
    def streams(symbols: Iterable[str], depth_speed: str = "100ms") -> list[str]:
        """Stream names for each symbol: diff depth, aggTrade, forceOrder, markPrice@1s."""
        depth = DEPTH_SPEEDS[depth_speed]
        out = []
        for s in symbols:
            s = s.lower()
            out += [f"{s}{depth}", f"{s}@aggTrade", f"{s}@forceOrder", f"{s}@markPrice@1s"]
        return out

    @staticmethod
    def stream_url(base: str, symbols: Iterable[str], depth_speed: str = "100ms") -> str:
        """Combined-stream URL, e.g. ``wss://fstream.binance.com/stream?streams=...``.

        >>> BinanceUsdmCodec.stream_url("wss://fstream.binance.com", ["BTCUSDT"])
        'wss://fstream.binance.com/stream?streams=btcusdt@depth@100ms/btcusdt@aggTrade/btcusdt@forceOrder/btcusdt@markPrice@1s'
        """
        base = base.rstrip("/")
        if not base.endswith("/stream"):
            base += "/stream"
        return f"{base}?streams=" + "/".join(BinanceUsdmCodec.streams(symbols, depth_speed))

    @staticmethod
    def subscribe_messages(symbols: Iterable[str], depth_speed: str = "100ms", req_id: int = 1) -> list[dict]:
        """``SUBSCRIBE`` requests for an open combined-stream connection."""
        return [{"method": "SUBSCRIBE", "params": BinanceUsdmCodec.streams(symbols, depth_speed), "id": req_id}]

    @staticmethod
    def snapshot_url(rest_base: str, symbol: str, limit: int = 1000) -> str:
        """REST depth snapshot URL, e.g. ``https://fapi.binance.com/fapi/v1/depth?...``."""
        return f"{rest_base.rstrip('/')}/fapi/v1/depth?symbol={quote(symbol.upper())}&limit={limit}"


def _rate(text: str) -> float | None:
    if not text:
        return None
    try:
        r = float(text)
    except ValueError:
        return None
    return r if math.isfinite(r) and -1.0 < r < 1.0 else None
