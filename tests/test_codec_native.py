"""The native codec: every event type, numbers and strings, and every malformed case."""

import json

import pytest

from monitor.codecs.native import NativeCodec
from monitor.events import Account, Book, Heartbeat, Liquidation, Mark, Order, Position, Trade
from tests.support import T0

GOOD = [
    ({"type": "book", "symbol": "BTC-PERP", "ts": T0, "seq": 7, "snapshot": True,
      "bids": [["64000.5", "1.5"], [63999, 2]], "asks": [[64001, "0.25"]]},
     Book(symbol="BTC-PERP", ts=T0, seq=7, snapshot=True, bids=[(64000.5, 1.5), (63999.0, 2.0)],
          asks=[(64001.0, 0.25)])),
    ({"type": "order", "symbol": "BTC-PERP", "ts": T0, "order_id": 17, "account": "a-1", "action": "cancel",
      "side": "sell", "price": "64010", "size": "0.5"},
     Order(symbol="BTC-PERP", ts=T0, order_id=17, account="a-1", action="cancel", side="sell", price=64010.0,
           size=0.5)),
    ({"type": "trade", "symbol": "ETH-PERP", "ts": T0, "price": 3400.1, "size": 2, "side": "buy",
      "liquidation": True},
     Trade(symbol="ETH-PERP", ts=T0, price=3400.1, size=2.0, side="buy", liquidation=True)),
    ({"type": "mark", "symbol": "ETH-PERP", "ts": T0, "mark": "3400", "index": 3399.5, "last": 3401,
      "funding_rate": "0.0001", "open_interest": 12345},
     Mark(symbol="ETH-PERP", ts=T0, mark=3400.0, index=3399.5, last=3401.0, funding_rate=0.0001,
          open_interest=12345.0)),
    ({"type": "position", "account": "a-2", "symbol": "BTC-PERP", "ts": T0, "size": "-0.5",
      "entry_price": 64000, "leverage": 20, "margin_mode": "isolated", "liq_price": "67000"},
     Position(account="a-2", symbol="BTC-PERP", ts=T0, size=-0.5, entry_price=64000.0, leverage=20.0,
              margin_mode="isolated", liq_price=67000.0)),
    ({"type": "account", "account": "a-2", "ts": T0, "equity": "1500.5", "maintenance_margin": 40},
     Account(account="a-2", ts=T0, equity=1500.5, maintenance_margin=40.0)),
    ({"type": "liquidation", "symbol": "BTC-PERP", "ts": T0, "side": "sell", "price": 63000, "size": 3,
      "account": "a-9"},
     Liquidation(symbol="BTC-PERP", ts=T0, side="sell", price=63000.0, size=3.0, account="a-9")),
    ({"type": "heartbeat", "ts": T0}, Heartbeat(ts=T0)),
]


@pytest.mark.parametrize("raw,expected", GOOD, ids=[g[0]["type"] for g in GOOD])
def test_each_type_decodes_alone_and_in_a_frame(raw, expected):
    """Each event type decodes as a single object and inside an array, numbers or strings."""
    c = NativeCodec()
    assert c.decode(json.dumps(raw)) == [expected]
    assert c.decode(json.dumps([raw, raw]).encode()) == [expected, expected]
    assert not c.stats.dropped


def test_defaults_and_extra_fields():
    """Optional fields take their defaults; unknown extra fields are ignored."""
    c = NativeCodec()
    [t] = c.decode(b'{"type":"trade","symbol":"X","ts":%d,"price":1,"size":1,"side":"sell","venue":"x"}' % T0)
    assert t.liquidation is False
    [p] = c.decode(b'{"type":"position","account":"a","symbol":"X","ts":%d,"size":1,"entry_price":1,"leverage":2}' % T0)
    assert p.margin_mode == "cross" and p.liq_price is None


BAD_EVENTS = {
    "nan price": {"type": "trade", "symbol": "X", "ts": T0, "price": "NaN", "size": 1, "side": "buy"},
    "inf size": {"type": "trade", "symbol": "X", "ts": T0, "price": 1, "size": "inf", "side": "buy"},
    "huge number": {"type": "trade", "symbol": "X", "ts": T0, "price": "1e400", "size": 1, "side": "buy"},
    "negative size": {"type": "trade", "symbol": "X", "ts": T0, "price": 1, "size": -1, "side": "buy"},
    "zero price": {"type": "trade", "symbol": "X", "ts": T0, "price": 0, "size": 1, "side": "buy"},
    "bad side": {"type": "trade", "symbol": "X", "ts": T0, "price": 1, "size": 1, "side": "long"},
    "bad action": {"type": "order", "symbol": "X", "ts": T0, "order_id": 1, "account": "a", "action": "zap",
                   "side": "buy", "price": 1, "size": 1},
    "missing field": {"type": "mark", "symbol": "X", "ts": T0, "mark": 1},
    "ts in seconds": {"type": "heartbeat", "ts": 1732400000},
    "ts float": {"type": "heartbeat", "ts": 1732400000000.5},
    "not a number": {"type": "trade", "symbol": "X", "ts": T0, "price": "abc", "size": 1, "side": "buy"},
    "negative level size": {"type": "book", "symbol": "X", "ts": T0, "seq": 1, "bids": [[1, -2]]},
    "leverage absurd": {"type": "position", "account": "a", "symbol": "X", "ts": T0, "size": 1,
                        "entry_price": 1, "leverage": 1e9},
}


@pytest.mark.parametrize("name", list(BAD_EVENTS))
def test_invalid_event_dropped_rest_of_frame_kept(name):
    """An impossible value drops that event only; the frame's valid events still count."""
    c = NativeCodec()
    good = {"type": "heartbeat", "ts": T0}
    out = c.decode(json.dumps([good, BAD_EVENTS[name], good]))
    assert out == [Heartbeat(ts=T0), Heartbeat(ts=T0)]
    assert c.stats.dropped == {"invalid_event": 1}
    [(reason, sample)] = c.stats.drain_samples()
    assert reason == "invalid_event" and '"type"' in sample


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2", b"\xff\xfe", b"null", b"42", b'"str"'])
def test_malformed_frames_dropped(raw):
    """Frames that are not JSON objects/arrays are counted and dropped, never raised."""
    c = NativeCodec()
    assert c.decode(raw) == []
    assert sum(c.stats.dropped.values()) == 1


def test_non_object_elements_and_unknown_types():
    """Array elements that are not objects are malformed; unknown types are counted apart."""
    c = NativeCodec()
    out = c.decode(json.dumps([5, "x", {"type": "funding_v2", "ts": T0}, {"no_type": 1}, {"type": "heartbeat", "ts": T0}]))
    assert out == [Heartbeat(ts=T0)]
    assert c.stats.unknown == {"funding_v2": 1}
    assert c.stats.dropped == {"malformed_event": 2, "invalid_event": 1}


def test_samples_are_truncated_and_bounded():
    """Drop samples are truncated and the sample queue is bounded."""
    c = NativeCodec()
    for _ in range(100):
        c.decode(b"{" + b"x" * 10_000)
    samples = c.stats.drain_samples()
    assert len(samples) == 32
    assert all(len(s) < 400 for _, s in samples)
    assert c.stats.dropped["malformed_frame"] == 100
