"""Bybit v5 codec on the venue's documented example messages.

There is no real Bybit v5 recording (the shared sample set predates v5), so these frames
follow the examples of https://bybit-exchange.github.io/docs/v5/websocket/public/ (orderbook,
trade, all-liquidation, ticker, and the connect page's op replies); where a test needs a
chain of book messages, ``u`` and the levels are adjusted so the example frames follow
each other.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.codecs.bybit_v5 import BybitV5Codec
from monitor.events import Book, Liquidation, Mark, Trade
from monitor.state.book import L2Book

TS = 1672304484978


def book_msg(kind: str, u: int, b=(), a=(), ts: int = TS, symbol: str = "BTCUSDT", depth: int = 50) -> str:
    return json.dumps({"topic": f"orderbook.{depth}.{symbol}", "type": kind, "ts": ts,
                       "data": {"s": symbol, "b": [list(x) for x in b], "a": [list(x) for x in a],
                                "u": u, "seq": 7961638724 + u},
                       "cts": ts - 2})


# The documented orderbook.50 snapshot example.
SNAPSHOT = ('{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":1672304484978,"data":{"s":"BTCUSDT",'
            '"b":[["16493.50","0.006"],["16493.00","0.100"]],"a":[["16611.00","0.029"],["16612.00","0.213"]],'
            '"u":18521288,"seq":7961638724},"cts":1672304484976}')


def feed(codec: BybitV5Codec, frames: list[str], book: L2Book | None = None) -> tuple[list, list[str]]:
    events, statuses = [], []
    for f in frames:
        for ev in codec.decode(f):
            events.append(ev)
            if isinstance(ev, Book) and book is not None:
                statuses.append(book.apply(ev.seq, ev.snapshot, ev.bids, ev.asks))
    return events, statuses


def test_snapshot_then_contiguous_deltas():
    """The documented snapshot replaces the book; deltas with u+1 apply with seq +1 each."""
    codec, book = BybitV5Codec(), L2Book("BTCUSDT")
    events, statuses = feed(codec, [
        SNAPSHOT,
        book_msg("delta", 18521289, b=[("16493.50", "0")], a=[("16611.00", "0.5")], ts=TS + 20),
        book_msg("delta", 18521290, b=[("16494.00", "1.2")], ts=TS + 40),
    ], book)
    assert events[0] == Book("BTCUSDT", TS, 1, True, [(16493.5, 0.006), (16493.0, 0.1)],
                             [(16611.0, 0.029), (16612.0, 0.213)])
    assert events[1] == Book("BTCUSDT", TS + 20, 2, False, [(16493.5, 0.0)], [(16611.0, 0.5)])
    assert statuses == ["snapshot", "ok", "ok"]
    assert (book.best_bid(), book.best_ask()) == (16494.0, 16611.0)
    assert codec.needs_snapshot() == set() and not codec.stats.dropped


def test_u_equal_one_in_a_delta_resets_the_book():
    """A delta with u == 1 (Bybit's book service restarted) is a snapshot: the book is replaced."""
    codec, book = BybitV5Codec(), L2Book("BTCUSDT")
    events, statuses = feed(codec, [
        SNAPSHOT,
        book_msg("delta", 1, b=[("16500.00", "3")], a=[("16501.00", "4")], ts=TS + 20),
        book_msg("delta", 2, b=[("16499.50", "1")], ts=TS + 40),
    ], book)
    assert [e.snapshot for e in events] == [True, True, False]
    assert statuses == ["snapshot", "snapshot", "ok"]
    assert book.bids == {16500.0: 3.0, 16499.5: 1.0} and book.asks == {16501.0: 4.0}


def test_gap_is_flagged_and_waits_for_a_new_snapshot():
    """A delta whose u skips one is a gap: L2Book says 'gap', the symbol needs a snapshot, later deltas wait."""
    codec, book = BybitV5Codec(), L2Book("BTCUSDT")
    _, statuses = feed(codec, [
        SNAPSHOT,
        book_msg("delta", 18521289, b=[("16493.00", "0.2")]),
        book_msg("delta", 18521291, b=[("16493.00", "0.3")]),  # 18521290 lost
        book_msg("delta", 18521292, b=[("16493.00", "0.4")]),
    ], book)
    assert statuses == ["snapshot", "ok", "gap"]
    assert codec.needs_snapshot() == {"BTCUSDT"} and not book.reliable
    assert codec.stats.dropped == Counter({"delta_without_snapshot": 1})
    assert codec.resubscribe_messages("BTCUSDT") == [{"op": "unsubscribe", "args": ["orderbook.50.BTCUSDT"]},
                                                     {"op": "subscribe", "args": ["orderbook.50.BTCUSDT"]}]

    _, statuses = feed(codec, [
        book_msg("snapshot", 18521400, b=[("16490.00", "1")], a=[("16491.00", "1")]),
        book_msg("delta", 18521401, a=[("16491.00", "0")]),
    ], book)
    assert statuses == ["snapshot", "ok"]
    assert codec.needs_snapshot() == set() and book.reliable


def test_deltas_before_the_first_snapshot_are_dropped():
    """A delta with nothing to apply to is counted and skipped; the snapshot starts the book."""
    codec = BybitV5Codec()
    assert codec.decode(book_msg("delta", 5, b=[("1", "1")])) == []
    assert codec.stats.dropped == Counter({"delta_without_snapshot": 1})
    [snap] = codec.decode(book_msg("snapshot", 6, b=[("1", "1")]))
    assert snap.snapshot and snap.seq == 1


def test_books_are_tracked_per_symbol():
    """Each symbol has its own u chain and seq counter."""
    codec = BybitV5Codec()
    events, _ = feed(codec, [
        book_msg("snapshot", 10, symbol="BTCUSDT"), book_msg("snapshot", 500, symbol="ETHUSDT", depth=200),
        book_msg("delta", 11, symbol="BTCUSDT"), book_msg("delta", 501, symbol="ETHUSDT", depth=200),
    ])
    assert [(e.symbol, e.seq) for e in events] == [("BTCUSDT", 1), ("ETHUSDT", 1), ("BTCUSDT", 2), ("ETHUSDT", 2)]


def test_public_trade_documented_example():
    """publicTrade: S is the taker side, v the size, T the event time."""
    codec = BybitV5Codec()
    out = codec.decode('{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,"data":['
                       '{"T":1672304486865,"s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50","L":"PlusTick",'
                       '"i":"20f43950-d8dd-5b31-9112-a178eb6023af","BT":false},'
                       '{"T":1672304486866,"s":"BTCUSDT","S":"Sell","v":"0.25","p":"16578.00","L":"MinusTick",'
                       '"i":"20f43950-d8dd-5b31-9112-a178eb6023b0","BT":false}]}')
    assert out == [Trade("BTCUSDT", 1672304486865, 16578.5, 0.001, "buy"),
                   Trade("BTCUSDT", 1672304486866, 16578.0, 0.25, "sell")]


def test_all_liquidation_side_is_inverted():
    """allLiquidation S is the liquidated position: Buy (a long) is a forced SELL, unlike Binance's order side."""
    codec = BybitV5Codec()
    out = codec.decode('{"topic":"allLiquidation.ROSEUSDT","type":"snapshot","ts":1739502303204,"data":['
                       '{"T":1739502302929,"s":"ROSEUSDT","S":"Sell","v":"20000","p":"0.04499"},'
                       '{"T":1739502302930,"s":"ROSEUSDT","S":"Buy","v":"15000","p":"0.04480"}]}')
    assert out == [
        Liquidation("ROSEUSDT", 1739502302929, "buy", 0.04499, 20000.0),
        Trade("ROSEUSDT", 1739502302929, 0.04499, 20000.0, "buy", liquidation=True),
        Liquidation("ROSEUSDT", 1739502302930, "sell", 0.0448, 15000.0),
        Trade("ROSEUSDT", 1739502302930, 0.0448, 15000.0, "sell", liquidation=True),
    ]


TICKER_SNAPSHOT = (
    '{"topic":"tickers.BTCUSDT","type":"snapshot","data":{"symbol":"BTCUSDT","tickDirection":"PlusTick",'
    '"price24hPcnt":"0.017103","lastPrice":"17216.00","prevPrice24h":"16926.50","highPrice24h":"17281.50",'
    '"lowPrice24h":"16915.00","prevPrice1h":"17238.00","markPrice":"17217.33","indexPrice":"17227.36",'
    '"openInterest":"68744.761","openInterestValue":"1183601235.91","turnover24h":"1570383121.943499",'
    '"volume24h":"91705.276","nextFundingTime":"1673280000000","fundingRate":"-0.000212","bid1Price":"17215.50",'
    '"bid1Size":"84.489","ask1Price":"17216.00","ask1Size":"83.020"},"cs":24987956059,"ts":1673272861686}')


def test_ticker_deltas_keep_the_last_known_values():
    """Ticker deltas omit unchanged fields; every Mark still carries mark and index (and the rest)."""
    codec = BybitV5Codec()
    [m0] = codec.decode(TICKER_SNAPSHOT)
    assert m0 == Mark("BTCUSDT", 1673272861686, 17217.33, 17227.36, 17216.0, -0.000212, 68744.761)
    delta = ('{"topic":"tickers.BTCUSDT","type":"delta","data":{"symbol":"BTCUSDT",%s},'
             '"cs":24987956060,"ts":%d}')
    [m1] = codec.decode(delta % ('"markPrice":"17220.10","openInterest":"68750.0"', 1673272862686))
    assert m1 == Mark("BTCUSDT", 1673272862686, 17220.10, 17227.36, 17216.0, -0.000212, 68750.0)
    # Only book-top fields changed: nothing for the mark channel.
    assert codec.decode(delta % ('"bid1Price":"17215.00","bid1Size":"1.0"', 1673272863686)) == []
    [m2] = codec.decode(delta % ('"indexPrice":"17230.00","fundingRate":""', 1673272864686))
    assert (m2.mark, m2.index, m2.funding_rate) == (17220.10, 17230.0, -0.000212)
    assert not codec.stats.dropped


def test_ticker_delta_without_a_known_mark_emits_nothing():
    """Until mark and index are both known for a symbol, no Mark is emitted."""
    codec = BybitV5Codec()
    assert codec.decode('{"topic":"tickers.ETHUSDT","type":"delta","ts":1673272861686,'
                        '"data":{"symbol":"ETHUSDT","markPrice":"1200.5"}}') == []
    [m] = codec.decode('{"topic":"tickers.ETHUSDT","type":"delta","ts":1673272861786,'
                       '"data":{"symbol":"ETHUSDT","indexPrice":"1200.1"}}')
    assert (m.mark, m.index, m.last) == (1200.5, 1200.1, None)


def test_control_replies_are_counted_and_failures_dropped():
    """subscribe/pong replies are counted as control; a failed subscribe is a drop with a sample."""
    codec = BybitV5Codec()
    ok = [
        '{"success":true,"ret_msg":"subscribe","conn_id":"2324d924-aa4d-45b0-a858-7b8be29ab52b",'
        '"req_id":"10001","op":"subscribe"}',
        '{"success":true,"ret_msg":"pong","conn_id":"0970e817-426e-429a-a679-ff7f55e0b16a","op":"ping"}',
        '{"req_id":"test","op":"pong","args":["1675418560633"],"conn_id":"cfcb4ocsvfriu23r3er0-1b"}',
    ]
    assert all(codec.decode(f) == [] for f in ok)
    assert codec.stats.unknown == Counter({"control:subscribe": 1, "control:ping": 1, "control:pong": 1})
    assert codec.decode('{"success":false,"ret_msg":"error:handler not found,topic:orderbook.50.FOOUSDT",'
                        '"conn_id":"x","req_id":"","op":"subscribe"}') == []
    assert codec.stats.dropped == Counter({"control_error": 1})
    assert "FOOUSDT" in codec.stats.drain_samples()[0][1]


BAD = {
    "not json": b"{nope",
    "binary": b"\xff\x00",
    "array": b"[1,2]",
    "no data": b'{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1672304484978}',
    "no ts": b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","data":[]}',
    "ts in seconds": b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486,"data":[]}',
    "bad price": b'{"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":1672304484978,'
                 b'"data":{"s":"BTCUSDT","b":[["abc","1"]],"a":[],"u":5}}',
    "bad side": b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,'
                b'"data":[{"T":1672304486865,"s":"BTCUSDT","S":"Long","v":"1","p":"1"}]}',
    "neither topic nor op": b'{"hello":"world"}',
}


@pytest.mark.parametrize("frame", BAD.values(), ids=BAD.keys())
def test_malformed_frames_are_dropped_not_raised(frame):
    """Broken JSON and invalid values are counted as one drop; decode returns []."""
    codec = BybitV5Codec()
    assert codec.decode(frame) == []
    assert sum(codec.stats.dropped.values()) == 1
    assert set(codec.stats.dropped) <= {"malformed_frame", "invalid_event"}


def test_unknown_topics_are_counted():
    """Topics we do not map (kline, the old liquidation topic) are counted by kind."""
    codec = BybitV5Codec()
    assert codec.decode('{"topic":"kline.5.BTCUSDT","type":"snapshot","ts":1672324988882,"data":[]}') == []
    assert codec.decode('{"topic":"liquidation.BTCUSDT","type":"snapshot","ts":1672324988882,"data":{}}') == []
    assert codec.stats.unknown == Counter({"kline": 1, "liquidation": 1})
    assert not codec.stats.dropped


def test_subscribe_messages_are_chunked():
    """Subscribe requests carry at most 10 topics each, all four kinds per symbol."""
    msgs = BybitV5Codec.subscribe_messages(["BTCUSDT", "ETHUSDT", "SOLUSDT"], depth=200)
    assert [len(m["args"]) for m in msgs] == [10, 2]
    topics = [t for m in msgs for t in m["args"]]
    assert topics[:4] == ["orderbook.200.BTCUSDT", "publicTrade.BTCUSDT", "allLiquidation.BTCUSDT", "tickers.BTCUSDT"]
    assert len(set(topics)) == 12 and all(m["op"] == "subscribe" for m in msgs)
    assert BybitV5Codec.ping_message() == {"op": "ping"}
    with pytest.raises(ValueError):
        BybitV5Codec.subscribe_messages(["BTCUSDT"], depth=25)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.just(1672304484978) |
                              st.sampled_from(["orderbook.50.X", "publicTrade.X", "allLiquidation.X", "tickers.X",
                                               "snapshot", "delta", "Buy", "1.5"]) |
                              st.text(max_size=20),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(
                                  st.sampled_from(["topic", "type", "ts", "data", "op", "success", "s", "b", "a",
                                                   "u", "T", "S", "v", "p", "symbol", "markPrice", "indexPrice"]),
                                  c, max_size=6),
                              max_leaves=20).map(json.dumps)))
def test_decode_never_raises(frame):
    """Arbitrary bytes and JSON shapes are counted, never raised."""
    codec = BybitV5Codec()
    codec.decode(frame)
    assert codec.stats.frames == 1
