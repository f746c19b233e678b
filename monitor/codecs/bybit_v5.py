"""Bybit v5 public linear/inverse streams (``format = "bybit-v5"``).

A frame is ``{"topic": "<kind>.<...>.<symbol>", "type": "snapshot"|"delta", "ts": ms,
"data": ...}``. The envelope is decoded once with ``data`` kept raw; the topic's kind
picks the typed decoder for ``data``. Mapping:

- ``orderbook.{1,50,200,500}.<sym>`` -> ``Book``. A ``snapshot`` message, or any message
  with ``u == 1`` (Bybit restarted its book service), replaces the book. Bybit's ``u``
  rises by exactly 1 per message of a topic, so a delta whose ``u`` is not the previous
  ``u + 1`` is a gap: it is emitted with our synthesized ``seq`` jumped by 2 (so
  :class:`~monitor.state.book.L2Book` flags it), the symbol goes into
  :meth:`BybitV5Codec.needs_snapshot` (the session resubscribes the topic, which makes
  Bybit send a fresh snapshot) and later deltas are dropped until that snapshot.
  Subscribe one depth per symbol: two depths would interleave two ``u`` chains.
  ``ts`` is the message ``ts``.
- ``publicTrade.<sym>`` -> ``Trade`` per entry; ``S`` is already the taker side; ``ts`` is
  the trade's ``T``.
- ``allLiquidation.<sym>`` -> ``Liquidation`` + ``Trade(liquidation=True)`` per entry.
  Bybit's ``S`` is the side of the *position* that was liquidated: ``Buy`` means a long
  was closed, by a forced SELL. Binance's ``forceOrder`` gives the forced *order's* side
  instead, and our ``Liquidation.side`` is the order's side, so Bybit's side is inverted
  here (``Buy`` -> ``"sell"``). Its fills also print, unflagged, in ``publicTrade``.
- ``tickers.<sym>`` -> ``Mark``. Deltas omit unchanged fields, so the codec keeps the
  last known mark/index/last/funding/open interest per symbol and every ``Mark`` it
  emits is complete; a ticker message that changes none of them emits nothing.
- ``op`` replies (subscribe, pong) count as ``unknown["control:<op>"]``; a failed one
  (``success: false``) is a drop, because a subscription did not happen. Other topics
  count in ``unknown`` by kind.

>>> c = BybitV5Codec()
>>> c.decode('{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":1672304484978,'
...          '"data":{"s":"BTCUSDT","b":[["16493.50","0.006"]],"a":[["16611.00","0.029"]],'
...          '"u":18521288,"seq":7961638724}}')
[Book(symbol='BTCUSDT', ts=1672304484978, seq=1, snapshot=True, bids=[(16493.5, 0.006)], asks=[(16611.0, 0.029)])]
>>> c.decode('{"topic":"allLiquidation.BTCUSDT","type":"snapshot","ts":1739502303204,'
...          '"data":[{"T":1739502302929,"s":"BTCUSDT","S":"Buy","v":"0.5","p":"16000"}]}')[0]
Liquidation(symbol='BTCUSDT', ts=1739502302929, side='sell', price=16000.0, size=0.5, account=None)
"""

from __future__ import annotations

import math
from typing import Iterable, Literal, Union

import msgspec

from monitor.codecs import DecodeStats
from monitor.events import Book, Event, Level, Liquidation, Mark, Price, Size, Symbol, Trade, Ts

DEPTHS = (1, 50, 200, 500)
MAX_ARGS = 10  # topics per subscribe request: Bybit's documented limit for spot, safe everywhere
MAX_SYMBOLS = 10_000  # per-symbol book and ticker state kept; Bybit lists ~500 linear symbols


class _Envelope(msgspec.Struct, gc=False):
    topic: str = ""
    type: str = ""
    ts: Union[Ts, None] = None
    data: msgspec.Raw = msgspec.Raw(b"")
    op: str = ""
    success: Union[bool, None] = None


class _BookData(msgspec.Struct, gc=False):
    symbol: Symbol = msgspec.field(name="s")
    update_id: int = msgspec.field(name="u")
    bids: list[Level] = msgspec.field(name="b", default_factory=list)
    asks: list[Level] = msgspec.field(name="a", default_factory=list)


class _Trade(msgspec.Struct, gc=False):
    ts: Ts = msgspec.field(name="T")
    symbol: Symbol = msgspec.field(name="s")
    side: Literal["Buy", "Sell"] = msgspec.field(name="S")
    size: Size = msgspec.field(name="v")
    price: Price = msgspec.field(name="p")


class _Ticker(msgspec.Struct, gc=False):
    # Strings, converted by hand: a delta omits a field, and some contracts send "".
    symbol: Symbol
    mark: Union[str, None] = msgspec.field(name="markPrice", default=None)
    index: Union[str, None] = msgspec.field(name="indexPrice", default=None)
    last: Union[str, None] = msgspec.field(name="lastPrice", default=None)
    funding_rate: Union[str, None] = msgspec.field(name="fundingRate", default=None)
    open_interest: Union[str, None] = msgspec.field(name="openInterest", default=None)


_envelope = msgspec.json.Decoder(_Envelope, strict=False)
_book_data = msgspec.json.Decoder(_BookData, strict=False)
_trades = msgspec.json.Decoder(list[_Trade], strict=False)
_ticker = msgspec.json.Decoder(_Ticker, strict=False)
_ERRORS = (msgspec.ValidationError, msgspec.DecodeError)


class _BookState:
    __slots__ = ("seq", "last_u", "live")

    def __init__(self) -> None:
        self.seq = 0
        self.last_u = 0
        self.live = False  # a snapshot arrived and no gap since


class _TickerState:
    __slots__ = ("mark", "index", "last", "funding_rate", "open_interest")

    def __init__(self) -> None:
        self.mark: float | None = None
        self.index: float | None = None
        self.last: float | None = None
        self.funding_rate: float | None = None
        self.open_interest: float | None = None


class BybitV5Codec:
    """Decoder for ``format = "bybit-v5"``; see the module docstring for the mapping."""

    def __init__(self, max_symbols: int = MAX_SYMBOLS) -> None:
        self.stats = DecodeStats()
        self.max_symbols = max_symbols  # book / ticker state beyond this is refused (too_many_symbols)
        self.books: dict[str, _BookState] = {}
        self.tickers: dict[str, _TickerState] = {}
        self._needs: set[str] = set()
        self._handlers = {
            "orderbook": self._orderbook,
            "publicTrade": self._trades,
            "allLiquidation": self._liquidations,
            "tickers": self._ticker,
        }

    def decode(self, frame: bytes | str) -> list[Event]:
        stats = self.stats
        stats.frames += 1
        try:
            out = self._decode(frame)
        except Exception as e:  # never raise on input: RecursionError, UnicodeEncodeError...
            stats.failed(frame, e)
            return []
        stats.events += len(out)
        return out

    def _decode(self, frame: bytes | str) -> list[Event]:
        stats = self.stats
        try:
            env = _envelope.decode(frame)
        except msgspec.ValidationError as e:  # a subclass of DecodeError: test it first
            stats.drop("invalid_event", frame, str(e))
            return []
        except msgspec.DecodeError as e:
            stats.drop("malformed_frame", frame, str(e))
            return []
        topic = env.topic
        if not topic:
            self._control(env, frame)
            return []
        kind = topic.partition(".")[0]
        handler = self._handlers.get(kind)
        if handler is None:
            stats.count_unknown(kind)
            return []
        if env.ts is None or not env.data:
            stats.drop("invalid_event", frame, "no ts or no data")
            return []
        try:
            return handler(env)
        except _ERRORS as e:
            stats.drop("invalid_event", frame, str(e))
            return []

    def _control(self, env: _Envelope, frame: bytes | str) -> None:
        if env.success is False:
            self.stats.drop("control_error", frame)
        elif env.op:
            self.stats.count_unknown(f"control:{env.op[:32]}")
        else:
            self.stats.drop("invalid_event", frame, "neither topic nor op")

    def _orderbook(self, env: _Envelope) -> list[Event]:
        d = _book_data.decode(env.data)
        sym = d.symbol
        st = self.books.get(sym)
        if st is None:
            if len(self.books) >= self.max_symbols:
                self.stats.dropped["too_many_symbols"] += 1
                return []
            st = self.books[sym] = _BookState()
        if env.type == "snapshot" or d.update_id == 1:
            st.seq += 1
            st.last_u = d.update_id
            st.live = True
            self._needs.discard(sym)
            return [Book(sym, env.ts, st.seq, True, d.bids, d.asks)]  # type: ignore[arg-type]
        if not st.live:
            # Before the first snapshot, or after a gap while the resubscription is pending.
            self.stats.dropped["delta_without_snapshot"] += 1
            return []
        if d.update_id != st.last_u + 1:
            st.seq += 2
            st.live = False
            self._needs.add(sym)
        else:
            st.seq += 1
            st.last_u = d.update_id
        return [Book(sym, env.ts, st.seq, False, d.bids, d.asks)]  # type: ignore[arg-type]

    def _trades(self, env: _Envelope) -> list[Event]:
        return [Trade(t.symbol, t.ts, t.price, t.size, "buy" if t.side == "Buy" else "sell")
                for t in _trades.decode(env.data)]

    def _liquidations(self, env: _Envelope) -> list[Event]:
        out: list[Event] = []
        for t in _trades.decode(env.data):
            # S is the liquidated position's side: Buy = a long, closed by a forced sell.
            side = "sell" if t.side == "Buy" else "buy"
            out.append(Liquidation(t.symbol, t.ts, side, t.price, t.size))
            out.append(Trade(t.symbol, t.ts, t.price, t.size, side, True))
        return out

    def _ticker(self, env: _Envelope) -> list[Event]:
        d = _ticker.decode(env.data)
        st = self.tickers.get(d.symbol)
        if st is None and len(self.tickers) >= self.max_symbols:
            self.stats.dropped["too_many_symbols"] += 1
            return []
        if st is None or env.type == "snapshot":
            st = self.tickers[d.symbol] = _TickerState()
        changed = False
        if d.mark is not None:
            changed = True
            st.mark = _positive(d.mark, st.mark)
        if d.index is not None:
            changed = True
            st.index = _positive(d.index, st.index)
        if d.last is not None:
            changed = True
            st.last = _positive(d.last, st.last)
        if d.funding_rate is not None:
            changed = True
            st.funding_rate = _num(d.funding_rate, st.funding_rate, -1.0, 1.0)
        if d.open_interest is not None:
            changed = True
            st.open_interest = _num(d.open_interest, st.open_interest, -1.0, 1e15)
        if not changed or st.mark is None or st.index is None:
            return []
        return [Mark(d.symbol, env.ts, st.mark, st.index, st.last, st.funding_rate,  # type: ignore[arg-type]
                     st.open_interest)]

    # -- book synchronisation ----------------------------------------------------------
    def needs_snapshot(self) -> set[str]:
        """Symbols whose book broke; resubscribe them (``resubscribe_messages``)."""
        return set(self._needs)

    # -- session helpers (pure: they build dicts) ----------------------------------------
    @staticmethod
    def topics(symbols: Iterable[str], depth: int = 50) -> list[str]:
        if depth not in DEPTHS:
            raise ValueError(f"depth must be one of {DEPTHS}")
        out = []
        for s in symbols:
            out += [f"orderbook.{depth}.{s}", f"publicTrade.{s}", f"allLiquidation.{s}", f"tickers.{s}"]
        return out

    @staticmethod
    def subscribe_messages(symbols: Iterable[str], depth: int = 50) -> list[dict]:
        """``subscribe`` requests, at most ``MAX_ARGS`` topics each.

        >>> BybitV5Codec.subscribe_messages(["BTCUSDT"])
        [{'op': 'subscribe', 'args': ['orderbook.50.BTCUSDT', 'publicTrade.BTCUSDT', 'allLiquidation.BTCUSDT', 'tickers.BTCUSDT']}]
        """
        topics = BybitV5Codec.topics(symbols, depth)
        return [{"op": "subscribe", "args": topics[i:i + MAX_ARGS]} for i in range(0, len(topics), MAX_ARGS)]

    @staticmethod
    def resubscribe_messages(symbol: str, depth: int = 50) -> list[dict]:
        """Unsubscribe then subscribe one book topic: Bybit answers with a fresh snapshot."""
        topic = f"orderbook.{depth}.{symbol}"
        return [{"op": "unsubscribe", "args": [topic]}, {"op": "subscribe", "args": [topic]}]

    @staticmethod
    def ping_message() -> dict:
        """Bybit drops a public connection without a ping every ~20 s."""
        return {"op": "ping"}


def _num(text: str, old: float | None, lo: float, hi: float) -> float | None:
    """The new value if it parses within (lo, hi); otherwise keep the old one."""
    if not text:
        return old
    try:
        v = float(text)
    except ValueError:
        return old
    return v if math.isfinite(v) and lo < v < hi else old


def _positive(text: str, old: float | None) -> float | None:
    return _num(text, old, 0.0, 1e15)
