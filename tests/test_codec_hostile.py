"""Hostile input through every codec: decode() returns a list of events and never raises.

Issue 11 row 2 (a 2 KB frame of nested brackets killed the daemon with a RecursionError),
row 13 (unknown type names grew a counter without bound) and the identifier bounds
(symbol / account lengths, ``seq`` beyond int64).
"""

from __future__ import annotations

import json
from typing import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monitor.codecs import MAX_UNKNOWN, OTHER, UNKNOWN_CHARS, DecodeStats
from monitor.codecs.binance_usdm import BinanceUsdmCodec
from monitor.codecs.bybit_v5 import BybitV5Codec
from monitor.codecs.native import NativeCodec
from monitor.events import EVENT_TYPES, MAX_ID_CHARS, MAX_SYMBOL_CHARS, Book, Order, Trade

CODECS: dict[str, Callable[[], object]] = {"native": NativeCodec, "binance": BinanceUsdmCodec,
                                           "bybit": BybitV5Codec}
TS = 1_732_400_000_000

# One valid frame per codec and event kind; "wrong types for every field" mutates these.
VALID: dict[str, list[dict]] = {
    "native": [
        {"type": "book", "symbol": "BTC-PERP", "ts": TS, "seq": 1, "snapshot": True,
         "bids": [["64000.5", "1"]], "asks": [[64001, 2]]},
        {"type": "order", "symbol": "BTC-PERP", "ts": TS, "order_id": "o1", "account": "a-1",
         "action": "new", "side": "buy", "price": 64000, "size": 1},
        {"type": "trade", "symbol": "BTC-PERP", "ts": TS, "price": 64000, "size": 1, "side": "sell",
         "liquidation": True},
        {"type": "mark", "symbol": "BTC-PERP", "ts": TS, "mark": 64000, "index": 64001, "last": 64000,
         "funding_rate": 0.0001, "open_interest": 1e6},
        {"type": "position", "account": 7, "symbol": "BTC-PERP", "ts": TS, "size": -2, "entry_price": 63000,
         "leverage": 20, "margin_mode": "isolated", "liq_price": 66000},
        {"type": "account", "account": "a-1", "ts": TS, "equity": 1000, "maintenance_margin": 10},
        {"type": "liquidation", "symbol": "BTC-PERP", "ts": TS, "side": "sell", "price": 64000, "size": 1,
         "account": "a-1"},
        {"type": "heartbeat", "ts": TS},
    ],
    "binance": [
        {"stream": "btcusdt@depth@100ms", "data": {"e": "depthUpdate", "E": TS, "s": "BTCUSDT", "U": 1, "u": 2,
                                                    "pu": 0, "b": [["1", "2"]], "a": [["3", "0"]]}},
        {"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "E": TS, "s": "BTCUSDT", "p": "1.5", "q": "2",
                                                 "m": True}},
        {"stream": "btcusdt@forceOrder", "data": {"e": "forceOrder", "E": TS, "o": {"s": "BTCUSDT", "S": "SELL",
                                                                                   "p": "1", "ap": "1.1", "q": "2",
                                                                                   "z": "2"}}},
        {"stream": "btcusdt@markPrice@1s", "data": {"e": "markPriceUpdate", "E": TS, "s": "BTCUSDT", "p": "1",
                                                     "i": "1.01", "r": "0.0001"}},
        {"e": "aggTrade", "E": TS, "s": "BTCUSDT", "p": "1.5", "q": "2", "m": False},
        {"result": None, "id": 1},
    ],
    "bybit": [
        {"topic": "orderbook.50.BTCUSDT", "type": "snapshot", "ts": TS,
         "data": {"s": "BTCUSDT", "b": [["1", "2"]], "a": [["3", "4"]], "u": 1, "seq": 9}},
        {"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": TS,
         "data": [{"T": TS, "s": "BTCUSDT", "S": "Buy", "v": "0.5", "p": "16000"}]},
        {"topic": "allLiquidation.BTCUSDT", "type": "snapshot", "ts": TS,
         "data": [{"T": TS, "s": "BTCUSDT", "S": "Sell", "v": "0.5", "p": "16000"}]},
        {"topic": "tickers.BTCUSDT", "type": "snapshot", "ts": TS,
         "data": {"symbol": "BTCUSDT", "markPrice": "1", "indexPrice": "1.1", "lastPrice": "1",
                  "fundingRate": "0.0001", "openInterest": "5"}},
        {"op": "subscribe", "success": True},
    ],
}

WRONG_VALUES = [None, True, 0, -1, 2**64, -(2**70), 1e308, "", "x" * 300, "NaN", "-Infinity", [], [[]], {},
                {"a": 1}, [1, 2, 3], "\u0000", "\u202e"]


def deep(open_: str, close: str, n: int) -> str:
    return open_ * n + close * n


HOSTILE: dict[str, bytes | str] = {
    "brackets 1000 (the issue's 2 KB frame)": "[" * 1000 + "]" * 1000,
    "brackets 100k": deep("[", "]", 100_000),
    "objects 1000": '{"a":' * 1000 + "1" + "}" * 1000,
    "objects 100k unclosed": '{"a":' * 100_000,
    "type then deep": '{"type":"book","symbol":' + deep("[", "]", 5000) + "}",
    "binance data deep": '{"stream":"x","data":' + '{"a":' * 5000 + "1" + "}" * 5000 + "}",
    "binance list deep": '{"stream":"x","data":[' + deep("[", "]", 5000) + "]}",
    "bybit data deep": '{"topic":"orderbook.50.X","type":"snapshot","ts":%d,"data":' % TS
                       + '{"a":' * 5000 + "1" + "}" * 5000 + "}",
    "bybit trades deep": '{"topic":"publicTrade.X","ts":%d,"data":' % TS + deep("[", "]", 5000) + "}",
    "huge number": "1" * 100_000,
    "huge number in price": '{"type":"trade","symbol":"X","ts":%d,"price":%s,"size":1,"side":"buy"}'
                            % (TS, "9" * 5000),
    "huge exponent": '{"type":"trade","symbol":"X","ts":%d,"price":1e999999,"size":1,"side":"buy"}' % TS,
    "seq 2^64": '{"type":"book","symbol":"X","ts":%d,"seq":%d}' % (TS, 2**64),
    "seq 2^200": '{"type":"book","symbol":"X","ts":%d,"seq":%d}' % (TS, 2**200),
    "ts 2^70": '{"type":"heartbeat","ts":%d}' % 2**70,
    "NaN literal": '{"type":"trade","symbol":"X","ts":%d,"price":NaN,"size":1,"side":"buy"}' % TS,
    "Infinity literal": '[{"type":"mark","symbol":"X","ts":%d,"mark":Infinity,"index":-Infinity}]' % TS,
    "invalid utf-8": b'{"type":"heartbeat\xff\xfe","ts":1}',
    "invalid utf-8 in list": b'[{"type":"trade","symbol":"\xc3\x28","ts":1732400000000}]',
    "overlong utf-8": b'{"type":"\xc0\xaf"}',
    "lone surrogate (str)": '{"type":"heartbeat\ud800","ts":1}',
    "lone surrogate in list (str)": '[{"type":"x\udfff"},{"type":"heartbeat","ts":%d}]' % TS,
    "escaped lone surrogate": '{"type":"\\ud800","ts":1}',
    "empty bytes": b"",
    "empty str": "",
    "whitespace": " \t\r\n ",
    "whitespace bytes": b"\n\n\n",
    "null bytes": b"\x00" * 64,
    "null byte inside": b'{"type":"heartbeat","ts":1732400000000}\x00',
    "1 MB string": '{"type":"' + "x" * (1 << 20) + '"}',
    "1 MB symbol": '{"type":"trade","symbol":"' + "S" * (1 << 20) + '","ts":%d,"price":1,"size":1,"side":"buy"}'
                   % TS,
    "1 MB bytes garbage": bytes(range(256)) * 4096,
    "json null": "null",
    "json number": "42",
    "json string": '"book"',
    "json true": "true",
    "list of null": "[null, 1, \"x\", [], {}]",
    "trailing garbage": '{"type":"heartbeat","ts":%d}xyz' % TS,
    "two objects": '{"type":"heartbeat","ts":%d}{"type":"heartbeat","ts":%d}' % (TS, TS),
    "duplicate keys": '{"type":"heartbeat","type":"book","ts":%d}' % TS,
    "BOM": "\ufeff" + '{"type":"heartbeat","ts":%d}' % TS,
    "control chars in type": '{"type":"\\u001b[31mred\\u0007","ts":1}',
}


def assert_events(out: object) -> None:
    assert type(out) is list
    assert all(isinstance(e, EVENT_TYPES) for e in out), out


@pytest.mark.parametrize("codec_name", CODECS)
@pytest.mark.parametrize("frame", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_corpus_never_raises(codec_name, frame):
    """Every corpus frame decodes to a list of events (usually []) and leaves a printable sample."""
    codec = CODECS[codec_name]()
    out = codec.decode(frame)
    assert_events(out)
    stats: DecodeStats = codec.stats  # type: ignore[attr-defined]
    assert stats.frames == 1
    for _, sample in stats.drain_samples():
        assert len(sample) < 1000
        sample.encode("utf-8")  # loggable: no lone surrogates
        assert "\x1b" not in sample and "\x00" not in sample
    for name in stats.unknown:
        name.encode("utf-8")
        assert len(name) <= UNKNOWN_CHARS * 4 and "\x1b" not in name
    # The codec still works afterwards.
    valid = json.dumps(VALID[codec_name][1])
    assert codec.decode(valid), valid


@pytest.mark.parametrize("codec_name", CODECS)
def test_the_issue_2kb_frame_is_counted_as_a_drop(codec_name):
    """Row 2: ``"["*1000 + "]"*1000`` and deep ``{"a":...}`` are dropped and counted, not raised."""
    codec = CODECS[codec_name]()
    assert codec.decode("[" * 1000 + "]" * 1000) == []
    assert codec.decode(('{"a":' * 1000 + "1" + "}" * 1000).encode()) == []
    stats = codec.stats
    assert sum(stats.dropped.values()) + sum(stats.unknown.values()) == 2
    assert stats.events == 0


@pytest.mark.parametrize("codec_name", CODECS)
def test_wrong_types_for_every_field(codec_name):
    """Each field of each valid message replaced by each wrong value: never raises."""
    codec = CODECS[codec_name]()
    n = 0
    for msg in VALID[codec_name]:
        for path in _paths(msg):
            for bad in WRONG_VALUES:
                frame = json.dumps(_replace(msg, path, bad))
                assert_events(codec.decode(frame))
                assert_events(codec.decode("[" + frame + "]"))
                n += 2
    assert codec.stats.frames == n


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _replace(obj, path, value):
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {k: (_replace(v, rest, value) if k == head else v) for k, v in obj.items()}
    return [(_replace(v, rest, value) if i == head else v) for i, v in enumerate(obj)]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20) | st.sampled_from(["book", "trade", "order", "depthUpdate", "aggTrade", "e", "s",
                                              "orderbook.50.X", "publicTrade.X", "data", "type", "topic"]),
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.sampled_from(["type", "ts", "symbol", "seq", "bids", "asks", "e", "E", "s", "p", "q",
                                       "data", "stream", "topic", "account", "side", "u", "U", "pu", "b", "a",
                                       "T", "S", "v", "op", "success", "x"]) | st.text(max_size=5),
                      children, max_size=8),
    max_leaves=40,
)

# derandomize: the same examples on every run (tests are deterministic); 300 per codec and strategy.
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("codec_name", CODECS)
@FUZZ
@given(data=st.binary(max_size=512))
def test_fuzz_random_bytes(codec_name, data):
    codec = CODECS[codec_name]()
    assert_events(codec.decode(data))
    assert_events(codec.decode(data.decode("latin-1")))


@pytest.mark.parametrize("codec_name", CODECS)
@FUZZ
@given(value=json_values, prefix=st.sampled_from(["", "[", "{\"data\":", "{\"topic\":\"tickers.X\",\"ts\":1732400000000,\"data\":"]),
       depth=st.integers(0, 3000))
def test_fuzz_json_structures(codec_name, value, prefix, depth):
    codec = CODECS[codec_name]()
    text = json.dumps(value)  # NaN / Infinity literals included
    assert_events(codec.decode(text))
    assert_events(codec.decode(text.encode()))
    nested = prefix + "[" * depth + text + "]" * depth + ("]" if prefix == "[" else "}" if prefix else "")
    assert_events(codec.decode(nested))


@pytest.mark.parametrize("codec_name", CODECS)
@FUZZ
@given(text=st.text(st.characters(categories=["Cs", "Cc", "L", "N", "P", "S", "Z"]), max_size=200))
def test_fuzz_random_text_including_surrogates(codec_name, text):
    codec = CODECS[codec_name]()
    assert_events(codec.decode(text))
    assert_events(codec.decode('{"type":' + json.dumps(text) + ',"ts":1732400000000}'))


# -- row 13: unknown names are bounded ----------------------------------------------------
def _unknown_frame(codec_name: str, name: str) -> str:
    if codec_name == "native":
        return json.dumps({"type": name, "ts": TS})
    if codec_name == "binance":
        return json.dumps({"stream": "x", "data": {"e": name, "E": TS}})
    return json.dumps({"topic": f"{name}.X", "ts": TS, "data": {}})


@pytest.mark.parametrize("codec_name", CODECS)
def test_unknown_type_names_are_bounded(codec_name):
    """Row 13: 5,000 distinct unknown names keep at most MAX_UNKNOWN keys plus one OTHER bucket."""
    codec = CODECS[codec_name]()
    for i in range(5000):
        assert codec.decode(_unknown_frame(codec_name, f"kind{i}-" + "z" * 100)) == []
    unknown = codec.stats.unknown
    assert len(unknown) == MAX_UNKNOWN + 1
    assert sum(unknown.values()) == 5000
    assert unknown[OTHER] == 5000 - MAX_UNKNOWN
    assert all(len(k) <= UNKNOWN_CHARS for k in unknown)
    # A name seen before the cap keeps counting under its own key.
    first = next(k for k in unknown if k != OTHER)
    codec.decode(_unknown_frame(codec_name, "kind0-" + "z" * 100))
    assert unknown[first] == 2


# -- identifier bounds ----------------------------------------------------------------------
def test_symbol_length_is_capped_native():
    c = NativeCodec()
    ok = {"type": "trade", "symbol": "S" * MAX_SYMBOL_CHARS, "ts": TS, "price": 1, "size": 1, "side": "buy"}
    long = dict(ok, symbol="S" * (MAX_SYMBOL_CHARS + 1))
    assert c.decode(json.dumps(ok)) == [Trade("S" * MAX_SYMBOL_CHARS, TS, 1.0, 1.0, "buy")]
    assert c.decode(json.dumps([long, ok])) == [Trade("S" * MAX_SYMBOL_CHARS, TS, 1.0, 1.0, "buy")]
    assert c.decode(json.dumps(long)) == []
    assert c.stats.dropped == {"invalid_event": 2}


@pytest.mark.parametrize("field", ["account", "order_id"])
def test_account_and_order_id_length_is_capped(field):
    c = NativeCodec()
    ok = {"type": "order", "symbol": "X", "ts": TS, "order_id": "o", "account": "a", "action": "new",
          "side": "buy", "price": 1, "size": 1}
    assert c.decode(json.dumps(dict(ok, **{field: "i" * MAX_ID_CHARS})))
    assert c.decode(json.dumps(dict(ok, **{field: "i" * (MAX_ID_CHARS + 1)}))) == []
    assert c.decode(json.dumps(dict(ok, **{field: 2**63}))) == []
    assert c.decode(json.dumps(dict(ok, **{field: 2**63 - 1})))
    assert c.stats.dropped == {"invalid_event": 2}
    acct = {"type": "account", "account": "a" * (MAX_ID_CHARS + 1), "ts": TS, "equity": 1}
    pos = {"type": "position", "account": "a" * (MAX_ID_CHARS + 1), "symbol": "X", "ts": TS, "size": 1,
           "entry_price": 1, "leverage": 1}
    liq = {"type": "liquidation", "symbol": "X", "ts": TS, "side": "buy", "price": 1, "size": 1,
           "account": "a" * (MAX_ID_CHARS + 1)}
    assert c.decode(json.dumps([acct, pos, liq])) == []
    assert c.stats.dropped == {"invalid_event": 5}


@pytest.mark.parametrize("seq", [2**63, 2**64, 2**64 + 1, 2**200, -1])
def test_seq_outside_int64_is_refused(seq):
    c = NativeCodec()
    frame = {"type": "book", "symbol": "X", "ts": TS, "seq": seq}
    assert c.decode(json.dumps(frame)) == []
    assert c.decode(json.dumps([frame])) == []
    assert c.stats.dropped == {"invalid_event": 2}
    assert c.decode(json.dumps(dict(frame, seq=2**63 - 1))) == [Book("X", TS, 2**63 - 1)]


def test_venue_codecs_cap_symbols():
    long = "S" * (MAX_SYMBOL_CHARS + 1)
    b = BinanceUsdmCodec()
    assert b.decode(json.dumps({"e": "aggTrade", "E": TS, "s": long, "p": "1", "q": "1", "m": True})) == []
    assert b.decode(json.dumps({"e": "depthUpdate", "E": TS, "s": long, "U": 1, "u": 2, "pu": 0})) == []
    assert not b.books and b.stats.dropped == {"invalid_event": 2}
    y = BybitV5Codec()
    assert y.decode(json.dumps({"topic": "publicTrade.X", "ts": TS,
                                "data": [{"T": TS, "s": long, "S": "Buy", "v": "1", "p": "1"}]})) == []
    assert y.decode(json.dumps({"topic": "orderbook.50.X", "type": "snapshot", "ts": TS,
                                "data": {"s": long, "u": 1}})) == []
    assert y.decode(json.dumps({"topic": "tickers.X", "ts": TS, "data": {"symbol": long, "markPrice": "1"}})) == []
    assert not y.books and not y.tickers and y.stats.dropped == {"invalid_event": 3}


def test_valid_frames_still_decode():
    """The VALID corpus itself decodes (guards the wrong-type test against testing nothing)."""
    n = NativeCodec()
    assert len(n.decode(json.dumps(VALID["native"]))) == len(VALID["native"])
    assert not n.stats.dropped
    assert isinstance(n.decode(json.dumps(VALID["native"][1]))[0], Order)
    for name in ("binance", "bybit"):
        c = CODECS[name]()
        for msg in VALID[name]:
            c.decode(json.dumps(msg))
        assert not c.stats.dropped, (name, c.stats.dropped)


# -- per-symbol state of the venue codecs is bounded --------------------------------------------
def test_venue_codecs_bound_their_per_symbol_state():
    """A feed inventing symbols cannot grow the codecs' book / ticker state past max_symbols."""
    b = BinanceUsdmCodec(max_symbols=10)
    for i in range(25):
        b.decode(json.dumps({"e": "depthUpdate", "E": TS, "s": f"S{i}", "U": 1, "u": 2, "pu": 0}))
    assert b.on_snapshot("NEW", 5, [], [], TS) == []
    assert len(b.books) == 10 and b.stats.dropped["too_many_symbols"] == 16
    y = BybitV5Codec(max_symbols=10)
    for i in range(25):
        y.decode(json.dumps({"topic": f"orderbook.50.S{i}", "type": "snapshot", "ts": TS,
                             "data": {"s": f"S{i}", "u": 1}}))
        y.decode(json.dumps({"topic": f"tickers.S{i}", "type": "snapshot", "ts": TS,
                             "data": {"symbol": f"S{i}", "markPrice": "1", "indexPrice": "1"}}))
    assert len(y.books) == 10 and len(y.tickers) == 10 and y.stats.dropped["too_many_symbols"] == 30
    # Known symbols keep working.
    assert y.decode(json.dumps({"topic": "tickers.S0", "ts": TS, "data": {"symbol": "S0", "markPrice": "2"}}))


def test_binance_rest_snapshot_body_never_raises():
    b = BinanceUsdmCodec()
    for body in ["[" * 100_000, '{"lastUpdateId":1,"bids":' + "[" * 5000 + "]" * 5000 + "}", "", "\ud800",
                 b"\xff", '{"lastUpdateId":"x"}', "null"]:
        assert b.on_rest_snapshot("BTCUSDT", body, TS) == []
    assert b.on_snapshot("BTCUSDT", 1, [[["1"]]], None, TS) == []  # type: ignore[arg-type]
    assert b.stats.dropped["invalid_snapshot"] == 8
