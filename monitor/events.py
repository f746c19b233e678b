"""Normalized events and anomalies: the bottom floor, importing nothing of ours.

Every codec turns venue bytes into these structs; state, detectors and alerts only ever
see these. Field constraints do the validation at decode time (finite, sizes >= 0,
plausible timestamps, bounded symbol / id lengths, ``seq`` within int64), so the hot path
never re-checks a value; an event breaking one is dropped and counted by its codec.

>>> import msgspec
>>> msgspec.json.decode(b'{"type":"heartbeat","ts":1732400000123}', type=Event)
Heartbeat(ts=1732400000123)
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal, Union

import msgspec

# 2000-01-01 .. 2100-01-01 in ms: anything else is a unit mistake (seconds, ns) or garbage.
Ts = Annotated[int, msgspec.Meta(ge=946_684_800_000, lt=4_102_444_800_000)]
# NaN fails every comparison, so these bounds also reject NaN and +-inf.
Price = Annotated[float, msgspec.Meta(gt=0.0, lt=1e15)]
Size = Annotated[float, msgspec.Meta(ge=0.0, lt=1e15)]
Signed = Annotated[float, msgspec.Meta(gt=-1e15, lt=1e15)]
Leverage = Annotated[float, msgspec.Meta(ge=0.0, le=1000.0)]
Rate = Annotated[float, msgspec.Meta(gt=-1.0, lt=1.0)]
# Identifier bounds: a feed inventing megabyte-long names must not grow state (symbols and
# accounts are dict keys in the state, detectors and payloads) nor flow into notifications.
# Real venues use symbols of < 30 characters and account / order ids of < 64.
MAX_SYMBOL_CHARS = 64
MAX_ID_CHARS = 128  # account and order ids given as strings
Symbol = Annotated[str, msgspec.Meta(max_length=MAX_SYMBOL_CHARS)]
# Integer ids must fit in int64 (msgspec decodes any JSON integer into a Python int).
Id = Union[Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)],
           Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]]
# A book sequence number: non-negative and within int64, like every venue's.
Seq = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Side = Literal["buy", "sell"]
Level = tuple[Price, Size]

_STRUCT = dict(tag_field="type", gc=False, omit_defaults=True)


class Book(msgspec.Struct, tag="book", **_STRUCT):
    """L2 book update; ``snapshot`` replaces the book, otherwise sizes are absolute."""

    symbol: Symbol
    ts: Ts
    seq: Seq
    snapshot: bool = False
    bids: list[Level] = []
    asks: list[Level] = []


class Order(msgspec.Struct, tag="order", **_STRUCT):
    """L3 order life cycle; for cancel/fill ``size`` is the size cancelled/filled."""

    symbol: Symbol
    ts: Ts
    order_id: Id
    account: Id
    action: Literal["new", "cancel", "fill", "amend"]
    side: Side
    price: Size = 0.0  # 0 for a market order
    size: Size = 0.0


class Trade(msgspec.Struct, tag="trade", **_STRUCT):
    """A print; ``side`` is the taker side."""

    symbol: Symbol
    ts: Ts
    price: Price
    size: Size
    side: Side
    liquidation: bool = False


class Mark(msgspec.Struct, tag="mark", **_STRUCT):
    """Mark/index/last price, funding rate per interval and open interest."""

    symbol: Symbol
    ts: Ts
    mark: Price
    index: Price
    last: Price | None = None
    funding_rate: Rate | None = None
    open_interest: Size | None = None


class Position(msgspec.Struct, tag="position", **_STRUCT):
    """An account's position after a change; ``size`` is signed (long > 0)."""

    account: Id
    symbol: Symbol
    ts: Ts
    size: Signed
    entry_price: Size
    leverage: Leverage
    margin_mode: Literal["cross", "isolated"] = "cross"
    liq_price: Size | None = None


class Account(msgspec.Struct, tag="account", **_STRUCT):
    """Cross-margin collateral of an account, shared by all its cross positions."""

    account: Id
    ts: Ts
    equity: Signed
    maintenance_margin: Size | None = None


class Liquidation(msgspec.Struct, tag="liquidation", **_STRUCT):
    """A forced reduction executed by the exchange; ``side`` is the forced order's side."""

    symbol: Symbol
    ts: Ts
    side: Side
    price: Price
    size: Size
    account: Id | None = None


class Heartbeat(msgspec.Struct, tag="heartbeat", **_STRUCT):
    """Keeps event time moving when the market is quiet."""

    ts: Ts


class Quote(msgspec.Struct, tag="quote", **_STRUCT):
    """A venue's own best bid/ask (Binance ``bookTicker``) at the moment our book from depth
    diffs reached the same update id: the state checks the book against it. Internal (venue
    codecs emit it); not part of the native feed protocol."""

    symbol: Symbol
    ts: Ts
    bid: float
    ask: float


Event = Union[Book, Order, Trade, Mark, Position, Account, Liquidation, Heartbeat]
EVENT_TAGS: frozenset[str] = frozenset(t.__struct_config__.tag for t in Event.__args__)  # type: ignore[attr-defined]
EVENT_TYPES: tuple[type, ...] = (Book, Order, Trade, Mark, Position, Account, Liquidation, Heartbeat, Quote)

Severity = Literal["info", "warning", "critical"]
SEVERITY_RANK: dict[str, int] = {"info": 0, "warning": 1, "critical": 2}


class Anomaly(msgspec.Struct, frozen=True):
    """What a detector raises: the contract's ``anomalies[]`` object.

    ``ts`` is the event time at which the detector raised it. ``id`` is derived from
    the content, so replaying the same stream gives the same ids (and storing it twice
    is a no-op).
    """

    id: str
    kind: str
    symbol: str | None
    account: str | None
    ts: int
    score: float
    severity: Severity
    detail: dict[str, Any] = {}

    @classmethod
    def make(
        cls,
        kind: str,
        ts: int,
        score: float,
        severity: Severity,
        *,
        symbol: str | None = None,
        account: Id | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Anomaly:
        acct = None if account is None else str(account)
        key = f"{kind}|{symbol}|{acct}|{ts}".encode()
        aid = hashlib.blake2b(key, digest_size=8).hexdigest()
        return cls(aid, kind, symbol, acct, ts, round(float(score), 6), severity, detail or {})


def max_severity(a: str, b: str) -> str:
    """The more severe of two severity names."""
    return a if SEVERITY_RANK[a] >= SEVERITY_RANK[b] else b
