"""Binance USD-M codec on real recorded traffic (cryptofeed sample_data, see tests/data/README.md).

The full recording in ``../shared/data/real`` is used when present, else the excerpt kept in
``tests/data``. The recording holds depthUpdate, bookTicker, aggTrade and kline only (kline is not decoded);
forceOrder, markPriceUpdate and the REST snapshot are checked on the venue's documented
example messages.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.codecs.binance_usdm import BinanceUsdmCodec
from monitor.events import Book, Liquidation, Mark, Trade
from monitor.state.book import L2Book

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
RECORDING = REAL / "BINANCE_FUTURES.ws.1.0"
EXCERPT = Path(__file__).resolve().parent / "data" / "binance_usdm_excerpt.jsonl"


def read_recording(path: Path) -> list[str]:
    """Received frames of a cryptofeed recording: the JSON after the first ': '."""
    frames = []
    with path.open(encoding="utf-8") as f:
        next(f)  # the URL line
        for line in f:
            head, sep, body = line.rstrip("\n").partition(": ")
            if sep and "<-" not in head:  # 'URL <- ts: {...}' lines are our own requests
                frames.append(body)
    return frames


@pytest.fixture(scope="module")
def recording() -> list[str]:
    if not RECORDING.exists():
        pytest.skip(f"full Binance recording absent ({RECORDING}); the excerpt tests still run")
    return read_recording(RECORDING)


@pytest.fixture(scope="module")
def frames() -> list[str]:
    if RECORDING.exists():
        return read_recording(RECORDING)
    if EXCERPT.exists():
        return EXCERPT.read_text(encoding="utf-8").splitlines()
    pytest.skip(f"no Binance data: neither {RECORDING} nor {EXCERPT}")


def payloads(frames: list[str]) -> list[dict]:
    return [json.loads(f)["data"] for f in frames]


def replay(frames: list[str], codec: BinanceUsdmCodec | None = None):
    """Decode every frame into L2Books; each symbol gets one synthetic snapshot, at its first diff.

    The snapshot's lastUpdateId is that diff's U (inside its [U, u], as the venue's rule
    wants) and its levels are the diff's own, a plausible book for these tests.
    """
    codec = codec or BinanceUsdmCodec()
    books: dict[str, L2Book] = {}
    statuses: dict[str, list[str]] = defaultdict(list)
    events = []
    snapped: set[str] = set()
    for f in frames:
        out = codec.decode(f)
        for sym in sorted(codec.needs_snapshot() - snapped):
            d = json.loads(f)
            d = d.get("data", d)  # combined-stream frame or raw payload
            assert d["s"] == sym and d["e"] == "depthUpdate"
            out = out + codec.on_snapshot(sym, d["U"], d["b"], d["a"], d["E"])
            snapped.add(sym)
        for ev in out:
            events.append(ev)
            if isinstance(ev, Book):
                book = books.setdefault(ev.symbol, L2Book(ev.symbol))
                statuses[ev.symbol].append(book.apply(ev.seq, ev.snapshot, ev.bids, ev.asks))
    return codec, events, statuses


def levels(raw: list[list[str]]) -> list[tuple[float, float]]:
    return [(float(p), float(s)) for p, s in raw]


def test_decodes_recording_to_the_right_events(frames):
    """Every diff becomes a Book delta and every aggTrade a Trade, field for field; the rest is counted."""
    codec, events, _ = replay(frames)
    data = payloads(frames)
    kinds = Counter(d["e"] for d in data)
    want_trades = [Trade(d["s"], d["E"], float(d["p"]), float(d["q"]), "sell" if d["m"] else "buy")
                   for d in data if d["e"] == "aggTrade"]
    want_deltas = [(d["s"], d["E"], levels(d["b"]), levels(d["a"])) for d in data if d["e"] == "depthUpdate"]

    assert [e for e in events if isinstance(e, Trade)] == want_trades
    deltas = [(e.symbol, e.ts, e.bids, e.asks) for e in events if isinstance(e, Book) and not e.snapshot]
    assert deltas == want_deltas
    assert sum(isinstance(e, Book) and e.snapshot for e in events) == len({d["s"] for d in data
                                                                           if d["e"] == "depthUpdate"})
    assert codec.stats.unknown == Counter({"kline": kinds["kline"]})  # bookTicker is decoded (Quote checks)
    assert not codec.stats.dropped
    assert codec.stats.frames == len(frames)
    assert codec.stats.events == len(events)


def test_recording_counts_match_its_readme(recording):
    """The full recording decodes to the counts shared/data/README.md states."""
    codec, events, _ = replay(recording)
    assert sum(isinstance(e, Book) and not e.snapshot for e in events) == 764
    assert sum(isinstance(e, Trade) for e in events) == 91
    assert codec.stats.unknown == Counter({"kline": 67})
    assert {e.symbol for e in events} == {"SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT"}


def test_excerpt_is_verbatim_from_recording(recording):
    """The CI excerpt is the recording's first frames, byte for byte."""
    excerpt = EXCERPT.read_text(encoding="utf-8").splitlines()
    assert 20 <= len(excerpt) <= 100
    assert excerpt == recording[: len(excerpt)]


def test_pu_chain_is_continuous_across_the_recording(frames):
    """After one snapshot per symbol, every diff chains on pu: seq +1 each, L2Book always 'ok'."""
    data = [d for d in payloads(frames) if d["e"] == "depthUpdate"]
    last_u: dict[str, int] = {}
    for d in data:  # the venue's own chain, checked independently of the codec
        assert last_u.get(d["s"], d["pu"]) == d["pu"]
        last_u[d["s"]] = d["u"]

    codec, events, statuses = replay(frames)
    for sym, st_list in statuses.items():
        assert st_list[0] == "snapshot" and set(st_list[1:]) == {"ok"}, sym
        seqs = [e.seq for e in events if isinstance(e, Book) and e.symbol == sym]
        assert seqs == list(range(1, len(seqs) + 1))
    assert codec.needs_snapshot() == set()
    assert all(s.gaps == 0 and not s.buffer for s in codec.books.values())


def depth_index(frames: list[str], symbol: str) -> list[int]:
    return [i for i, d in enumerate(payloads(frames)) if d["e"] == "depthUpdate" and d["s"] == symbol]


def test_removed_diff_is_a_gap_then_a_snapshot_resyncs(frames):
    """Dropping one SUSHI diff makes L2Book report 'gap' and asks for a snapshot; a new one heals it."""
    sushi = depth_index(frames, "SUSHIUSDT")
    assert len(sushi) >= 10
    holed = frames[: sushi[5]] + frames[sushi[5] + 1:]
    codec, events, statuses = replay(holed)

    # The snapshot bridges diff 0, diffs 0-4 apply, diff 5 is missing, diff 6 breaks the chain.
    assert statuses["SUSHIUSDT"] == ["snapshot"] + ["ok"] * 5 + ["gap"]
    assert codec.needs_snapshot() == {"SUSHIUSDT"}
    assert all(set(s[1:]) == {"ok"} for sym, s in statuses.items() if sym != "SUSHIUSDT")
    assert codec.books["SUSHIUSDT"].gaps == 1

    # The diffs since the gap wait in the buffer; a snapshot inside the third one resumes there.
    buffered = list(codec.books["SUSHIUSDT"].buffer)
    assert buffered[0].first_id == json.loads(frames[sushi[6]])["data"]["U"]
    third = buffered[2]
    out = codec.on_snapshot("SUSHIUSDT", third.first_id, [["7.6", "10"]], [["7.7", "10"]], third.ts)
    book = L2Book("SUSHIUSDT")
    book.apply(0, True, [], [])
    resumed = [book.apply(e.seq, e.snapshot, e.bids, e.asks) for e in out]
    assert resumed == ["snapshot"] + ["ok"] * (len(buffered) - 2)
    assert [e.ts for e in out[1:]] == [m.ts for m in buffered[2:]]
    assert codec.needs_snapshot() == set()
    assert codec.books["SUSHIUSDT"].discarded == 2


def test_late_snapshot_discards_older_diffs(frames):
    """Diffs buffered before a snapshot are dropped when u < lastUpdateId; the bridging one applies."""
    sushi = depth_index(frames, "SUSHIUSDT")[:6]
    codec = BinanceUsdmCodec()
    assert all(codec.decode(frames[i]) == [] for i in sushi)
    d = [json.loads(frames[i])["data"] for i in sushi]
    out = codec.on_snapshot("SUSHIUSDT", d[3]["u"], [], [], d[3]["E"])  # lastUpdateId == u is inside [U, u]
    assert [e.snapshot for e in out] == [True, False, False, False]
    assert [(e.ts, e.bids, e.asks) for e in out[1:]] == [(x["E"], levels(x["b"]), levels(x["a"])) for x in d[3:]]
    assert [e.seq for e in out] == [1, 2, 3, 4]
    assert codec.books["SUSHIUSDT"].discarded == 3


def test_stale_snapshot_is_refused(frames):
    """A snapshot older than the first buffered diff cannot be joined: no events, still waiting."""
    sushi = depth_index(frames, "SUSHIUSDT")[:3]
    codec = BinanceUsdmCodec()
    for i in sushi:
        codec.decode(frames[i])
    first = json.loads(frames[sushi[0]])["data"]
    assert codec.on_snapshot("SUSHIUSDT", first["U"] - 1, [], [], first["E"]) == []
    assert codec.needs_snapshot() == {"SUSHIUSDT"}
    assert codec.stats.dropped["stale_snapshot"] == 1
    assert len(codec.on_snapshot("SUSHIUSDT", first["U"], [], [], first["E"])) == 4


def test_snapshot_older_than_the_live_chain_is_refused(frames):
    """While live, a snapshot behind the last applied u is ignored rather than rewinding the book."""
    codec, _, _ = replay(frames)
    sync = codec.books["SUSHIUSDT"]
    assert codec.on_snapshot("SUSHIUSDT", sync.last_final - 1, [], [], 1626992741000) == []
    assert sync.state == "live" and codec.stats.dropped["stale_snapshot"] == 1


def test_buffer_is_bounded_and_overflow_counted(frames):
    """Without a snapshot the buffer keeps only the newest diffs and counts what it pushed out."""
    sushi = depth_index(frames, "SUSHIUSDT")[:10]
    codec = BinanceUsdmCodec(max_buffer=4)
    for i in sushi:
        codec.decode(frames[i])
    sync = codec.books["SUSHIUSDT"]
    assert sync.overflow == 6 and codec.stats.dropped["depth_buffer_overflow"] == 6
    assert [m.final_id for m in sync.buffer] == [json.loads(frames[i])["data"]["u"] for i in sushi[6:]]


def test_unknown_kinds_and_control_replies_are_counted_not_fatal(frames):
    """kline, unseen kinds and subscription replies are counted; a venue error reply is a drop."""
    codec = BinanceUsdmCodec()
    klines = [f for f in frames if '"e":"kline"' in f]
    assert klines and all(codec.decode(f) == [] for f in klines)
    assert codec.decode('{"stream":"btcusdt@ticker","data":{"e":"24hrTicker","E":1626992741000,"s":"BTCUSDT"}}') == []
    assert codec.decode('{"e":"continuous_kline","E":1626992741000}') == []
    assert codec.decode('{"result":null,"id":1}') == []
    assert codec.decode('{"error":{"code":2,"msg":"Invalid request"},"id":2}') == []
    assert codec.stats.unknown == Counter({"kline": len(klines), "24hrTicker": 1, "continuous_kline": 1,
                                           "control": 1})
    assert codec.stats.dropped == Counter({"venue_error": 1})
    # The codec still works afterwards.
    assert len(codec.decode(next(f for f in frames if '"e":"aggTrade"' in f))) == 1


BAD = {
    "not json": b"{not json",
    "empty": b"",
    "binary": b"\xff\xfe\x00",
    "truncated": b'{"stream":"sushiusdt@aggTrade","data":{"e":"aggTrade","E":16269927',
    "negative price": b'{"stream":"x","data":{"e":"aggTrade","E":1626992741575,"s":"X","p":"-1","q":"1","m":true}}',
    "nan size": b'{"stream":"x","data":{"e":"aggTrade","E":1626992741575,"s":"X","p":"1","q":"NaN","m":true}}',
    "ts in seconds": b'{"stream":"x","data":{"e":"aggTrade","E":1626992741,"s":"X","p":"1","q":"1","m":true}}',
    "diff without pu": b'{"stream":"x","data":{"e":"depthUpdate","E":1626992741575,"s":"X","U":1,"u":2}}',
    "bad level": b'{"e":"depthUpdate","E":1626992741575,"s":"X","U":1,"u":2,"pu":0,"b":[["1"]]}',
    "bad side": b'{"e":"forceOrder","E":1626992741575,"o":{"s":"X","S":"LONG","p":"1","q":"1"}}',
}


@pytest.mark.parametrize("frame", BAD.values(), ids=BAD.keys())
def test_malformed_and_invalid_frames_are_dropped_not_raised(frame):
    """Broken JSON and out-of-range values are counted as drops with a sample; decode returns []."""
    codec = BinanceUsdmCodec()
    assert codec.decode(frame) == []
    assert sum(codec.stats.dropped.values()) == 1
    assert set(codec.stats.dropped) <= {"malformed_frame", "invalid_event"}
    assert codec.stats.drain_samples()
    assert not codec.stats.unknown and not codec.books


def test_raw_stream_payloads_decode_like_combined_frames(frames):
    """A payload without the combined-stream envelope yields the same events."""
    _, combined, _ = replay(frames)
    _, raw, _ = replay([json.dumps(json.loads(f)["data"]) for f in frames])
    assert raw == combined


def test_force_order_documented_example():
    """forceOrder (Binance docs example): a Liquidation with the forced order's side, and a flagged Trade."""
    codec = BinanceUsdmCodec()
    out = codec.decode(b'{"stream":"btcusdt@forceOrder","data":{"e":"forceOrder","E":1568014460893,"o":{'
                       b'"s":"BTCUSDT","S":"SELL","o":"LIMIT","f":"IOC","q":"0.014","p":"9910","ap":"9910",'
                       b'"X":"FILLED","l":"0.014","z":"0.014","T":1568014460893}}}')
    assert out == [Liquidation("BTCUSDT", 1568014460893, "sell", 9910.0, 0.014),
                   Trade("BTCUSDT", 1568014460893, 9910.0, 0.014, "sell", liquidation=True)]
    [liq, _] = codec.decode(b'{"e":"forceOrder","E":1568014460893,"o":{"s":"ETHUSDT","S":"BUY","q":"2",'
                            b'"p":"3000","ap":"3010.5","X":"PARTIALLY_FILLED","l":"1","z":"1.5"}}')
    assert (liq.side, liq.price, liq.size) == ("buy", 3010.5, 1.5)  # average fill price, filled quantity


def test_mark_price_documented_example():
    """markPriceUpdate (Binance docs example) becomes a Mark; '' funding means none; arrays decode."""
    codec = BinanceUsdmCodec()
    msg = {"e": "markPriceUpdate", "E": 1562305380000, "s": "BTCUSDT", "p": "11794.15000000",
           "i": "11784.62659091", "P": "11784.25641265", "r": "0.00038167", "T": 1562306400000}
    assert codec.decode(json.dumps({"stream": "btcusdt@markPrice@1s", "data": msg})) == [
        Mark("BTCUSDT", 1562305380000, 11794.15, 11784.62659091, funding_rate=0.00038167)]
    quarterly = dict(msg, s="BTCUSDT_211231", r="")
    out = codec.decode(json.dumps({"stream": "!markPrice@arr@1s", "data": [msg, quarterly]}))
    assert [(m.symbol, m.funding_rate) for m in out] == [("BTCUSDT", 0.00038167), ("BTCUSDT_211231", None)]
    assert not codec.stats.dropped


def test_rest_snapshot_body_documented_example():
    """The raw GET /fapi/v1/depth body (docs example) feeds the sync; its E is the snapshot's ts."""
    codec = BinanceUsdmCodec()
    body = (b'{"lastUpdateId":1027024,"E":1589436922972,"T":1589436922959,'
            b'"bids":[["4.00000000","431.00000000"]],"asks":[["4.00000200","12.00000000"]]}')
    assert codec.on_rest_snapshot("BTCUSDT", body) == [
        Book("BTCUSDT", 1589436922972, 1, True, [(4.0, 431.0)], [(4.000002, 12.0)])]
    assert codec.on_rest_snapshot("BTCUSDT", b'{"code":-1121,"msg":"Invalid symbol."}') == []
    assert codec.on_snapshot("BTCUSDT", 1, [["x", "1"]], [], 1589436922972) == []
    assert codec.stats.dropped == Counter({"invalid_snapshot": 2})


def test_session_helpers():
    """Stream URL, SUBSCRIBE payload and REST snapshot URL use the venue's naming."""
    url = BinanceUsdmCodec.stream_url("wss://fstream.binance.com/", ["SUSHIUSDT", "btcusdt"], depth_speed="250ms")
    assert url == ("wss://fstream.binance.com/stream?streams=sushiusdt@depth/sushiusdt@aggTrade/"
                   "sushiusdt@forceOrder/sushiusdt@markPrice@1s/btcusdt@depth/btcusdt@aggTrade/"
                   "btcusdt@forceOrder/btcusdt@markPrice@1s")
    [sub] = BinanceUsdmCodec.subscribe_messages(["BTCUSDT"])
    assert sub == {"method": "SUBSCRIBE", "id": 1, "params": ["btcusdt@depth@100ms", "btcusdt@aggTrade",
                                                              "btcusdt@forceOrder", "btcusdt@markPrice@1s"]}
    assert BinanceUsdmCodec.snapshot_url("https://fapi.binance.com", "btcusdt") == \
        "https://fapi.binance.com/fapi/v1/depth?symbol=BTCUSDT&limit=1000"


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_any_removed_diffs_give_a_gap_exactly_where_the_chain_breaks(frames, data):
    """Remove random diffs: each symbol's first gap is its first kept diff after its first hole."""
    depth = [i for i, d in enumerate(payloads(frames)) if d["e"] == "depthUpdate"]
    removed = set(data.draw(st.lists(st.sampled_from(depth), max_size=8)))
    kept = [f for i, f in enumerate(frames) if i not in removed]
    codec, events, statuses = replay(kept)

    by_sym: dict[str, list[int]] = defaultdict(list)
    for i in depth:
        by_sym[json.loads(frames[i])["data"]["s"]].append(i)
    want_gapped = set()
    for sym, idx in by_sym.items():
        alive = [i for i in idx if i not in removed]
        if not alive:
            continue
        first_hole = next((i for i in idx if i in removed and i > alive[0]), None)
        after = [i for i in alive if first_hole is not None and i > first_hole]
        if after:
            want_gapped.add(sym)
            n_ok = len([i for i in alive if i < after[0]])  # the snapshot's own diff applies too
            assert statuses[sym] == ["snapshot"] + ["ok"] * n_ok + ["gap"], sym
        else:
            assert statuses[sym] == ["snapshot"] + ["ok"] * len(alive), sym
    assert codec.needs_snapshot() == want_gapped


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200),
                 st.recursive(st.none() | st.booleans() | st.integers() | st.just(1672304484978) |
                              st.sampled_from(["depthUpdate", "aggTrade", "forceOrder", "markPriceUpdate", "kline",
                                               "SELL", "1.5", "0"]) |
                              st.text(max_size=8),
                              lambda c: st.lists(c, max_size=4) | st.dictionaries(
                                  st.sampled_from(["e", "E", "s", "U", "u", "pu", "b", "a", "p", "q", "m", "o",
                                                   "data", "stream", "id", "result", "error", "i", "r"]),
                                  c, max_size=6),
                              max_leaves=20).map(json.dumps)))
def test_decode_never_raises(frame):
    """Arbitrary bytes and arbitrary JSON shapes are counted, never raised."""
    codec = BinanceUsdmCodec()
    codec.decode(frame)
    assert codec.stats.frames == 1
