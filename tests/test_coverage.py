"""Coverage is an anomaly (issue 16, part 3): a book that never syncs, a subscribed stream
that stays silent, a message kind the codec does not decode — each raised as a
``coverage`` anomaly with its reason, and counted in /metrics by source."""

import asyncio
import json
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import threading

import pytest
from websockets.asyncio.server import serve

from monitor.codecs.binance_usdm import BinanceUsdmCodec
from monitor.config import parse
from monitor.daemon import Daemon
from monitor.pipeline import build_pipeline
from monitor.sources import RecordedItems
from tests.support import TIMEOUT
from tests.test_e2e_binance import load_frames
from tests.test_ops import free_port
from tests.test_replay_real import CRYPTOFEED

T = 1_626_992_741_000


def depth(symbol: str, ts: int, u0: int, u1: int, pu: int) -> str:
    return json.dumps({"stream": f"{symbol.lower()}@depth@100ms", "data": {
        "e": "depthUpdate", "E": ts, "T": ts, "s": symbol, "U": u0, "u": u1, "pu": pu, "b": [], "a": []}})


def mark(symbol: str, ts: int) -> str:
    return json.dumps({"stream": f"{symbol.lower()}@markPrice@1s", "data": {
        "e": "markPriceUpdate", "E": ts, "s": symbol, "p": "100", "i": "100", "r": "0.0001"}})


def run(frames: list[str], symbols=("AUSDT",), streams=("depth", "markPrice"), **bounds):
    codec, pipeline = BinanceUsdmCodec(), build_pipeline()
    pipeline.coverage.watch("binance", codec, list(symbols), streams, **bounds)
    found = []
    for f in frames:
        found += pipeline.feed(codec.decode(f))
    return [a for a in found if a.kind == "coverage"]


def test_a_book_that_never_syncs_is_critical_once():
    """Diffs buffered for 30 s of event time with no snapshot: one critical book_not_synced."""
    frames = [depth("AUSDT", T + i * 100, 10 * i, 10 * i + 9, 10 * i - 1) for i in range(400)]
    frames += [mark("AUSDT", T + i * 1000) for i in range(40)]
    frames.sort(key=lambda f: json.loads(f)["data"]["E"])
    got = run(frames, unsynced_after_ms=30_000)
    assert [(a.detail["reason"], a.symbol, a.severity) for a in got] == [("book_not_synced", "AUSDT", "critical")]
    assert got[0].detail["waiting_ms"] >= 30_000 and got[0].ts >= T + 30_000


def test_a_synced_book_raises_no_coverage():
    """The same stream with its REST snapshot: nothing."""
    codec, pipeline = BinanceUsdmCodec(), build_pipeline()
    pipeline.coverage.watch("binance", codec, ["AUSDT"], ("depth", "markPrice"), unsynced_after_ms=30_000)
    found = pipeline.feed(codec.decode(depth("AUSDT", T, 0, 9, -1)))
    found += pipeline.feed(codec.on_rest_snapshot("AUSDT", json.dumps({"lastUpdateId": 5, "E": T, "bids": [],
                                                                        "asks": []})))
    for i in range(1, 400):
        found += pipeline.feed(codec.decode(depth("AUSDT", T + i * 100, 10 * i, 10 * i + 9, 10 * i - 1)))
        if i % 10 == 0:
            found += pipeline.feed(codec.decode(mark("AUSDT", T + i * 100)))
    assert [a for a in found if a.kind == "coverage"] == []


def test_a_subscribed_stream_that_stays_silent_is_reported():
    """markPrice subscribed for BUSDT, never received while AUSDT flows: stream_silent, once."""
    frames = []
    for i in range(900):
        frames.append(mark("AUSDT", T + i * 100))
    got = run(frames, symbols=("AUSDT", "BUSDT"), streams=("markPrice",), silent_after_ms=60_000)
    assert [(a.detail["reason"], a.symbol, a.detail["stream"]) for a in got] == [
        ("stream_silent", "BUSDT", "markPrice")]


def test_unknown_message_kinds_are_reported_once_and_deliberately_ignored_ones_are_not():
    """A kind the codec does not decode: one info anomaly naming it; kline (skipped on purpose): none."""
    odd = json.dumps({"stream": "x@odd", "data": {"e": "oddThing", "E": T + 500, "s": "AUSDT"}})
    kline = json.dumps({"stream": "x@kline_1m", "data": {"e": "kline", "E": T + 600, "s": "AUSDT"}})
    frames = [mark("AUSDT", T), odd, odd, kline] + [mark("AUSDT", T + i * 1000) for i in range(1, 5)]
    got = run(frames, streams=())
    assert [(a.detail["reason"], a.detail["type"], a.severity) for a in got] == [("unknown_message", "oddThing", "info")]


@pytest.mark.skipif(not CRYPTOFEED.exists(), reason=f"absent: {CRYPTOFEED}")
def test_replaying_a_recording_without_snapshots_says_every_book_never_synced():
    """The cryptofeed Binance file (no REST snapshots): a book_not_synced per symbol, on event time."""
    codec, pipeline = BinanceUsdmCodec(), build_pipeline()
    pipeline.coverage.watch("", codec, (), None, unsynced_after_ms=10_000)
    found = pipeline.run_items(RecordedItems(CRYPTOFEED), lambda _: codec)
    got = sorted((a.symbol, a.severity) for a in found if a.kind == "coverage"
                 and a.detail["reason"] == "book_not_synced")
    assert got == [(s, "critical") for s in ("AKROUSDT", "CTKUSDT", "KEEPUSDT", "SUSHIUSDT")]


@pytest.mark.e2e
def test_rest_refused_live_raises_book_not_synced_and_metrics_say_so(tmp_path):
    """The venue refuses every REST snapshot: the daemon raises book_not_synced per symbol and
    /metrics shows the unsynced books and the coverage anomalies by source and reason."""
    frames = load_frames()
    symbols = sorted({json.loads(f)["data"]["s"] for f in frames if '"depthUpdate"' in f})

    class Refuse(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            self.send_response(418)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    port = free_port()

    async def handler(ws):
        for f in frames:
            await ws.send(f)
        await ws.wait_closed()

    async def main():
        async with serve(handler, "127.0.0.1", 0) as server:
            cfg = parse(f"""
[[sources]]
name = "binance"
format = "binance-usdm"
url = "ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
rest_url = "http://127.0.0.1:{httpd.server_address[1]}"
symbols = {json.dumps(symbols)}
unsynced_after = "10s"
[store]
path = "{tmp_path / 'pw.db'}"
[metrics]
enabled = true
listen = "127.0.0.1:{port}"
""")
            daemon = Daemon(cfg)
            task = asyncio.create_task(daemon.run(install_signals=False))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT
            while daemon.anomaly_kinds.get("coverage", 0) < len(symbols):
                assert loop.time() < deadline, dict(daemon.anomaly_kinds)
                await asyncio.sleep(0.05)
            text = await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode())
            daemon.request_stop()
            assert await task == 0
            return daemon, text

    try:
        daemon, text = asyncio.run(main())
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert daemon.pipeline.state.books == {}
    assert f'perpwatch_books_unsynced{{source="binance"}} {float(len(symbols))}' in text
    assert (f'perpwatch_coverage_anomalies_total{{reason="book_not_synced",source="binance"}} '
            f'{float(len(symbols))}') in text
    assert 'perpwatch_unknown_message_types_total{source="binance",type="kline"}' in text


# -- Binance @trade and bookTicker (issue 16, part 4) ---------------------------------------
def ticker(symbol: str, ts: int, u: int, bid: str, ask: str) -> str:
    return json.dumps({"stream": f"{symbol.lower()}@bookTicker", "data": {
        "e": "bookTicker", "u": u, "s": symbol, "b": bid, "B": "1", "a": ask, "A": "1", "T": ts, "E": ts}})


def test_raw_trade_stream_decodes_like_agg_trade():
    """@trade (the venue's documented payload, as hftbacktest records it): a Trade, taker side from m."""
    from monitor.events import Trade

    c = BinanceUsdmCodec()
    frame = ('{"stream":"ethusdt@trade","data":{"e":"trade","E":1723161256560,"T":1723161256560,"s":"ETHUSDT",'
             '"t":4308068523,"p":"2681.62","q":"1.000","X":"MARKET","m":true}}')
    assert c.decode(frame) == [Trade("ETHUSDT", 1723161256560, 2681.62, 1.0, "sell")]
    assert c.decode(frame.replace('"MARKET"', '"INSURANCE_FUND"')) == []
    assert c.stats.unknown == {"trade:INSURANCE_FUND": 1}


def test_book_ticker_at_the_books_update_id_is_checked_and_a_divergence_reported():
    """bookTicker at the same update id as the book: agreeing is silent, disagreeing is a coverage warning."""
    codec, pipeline = BinanceUsdmCodec(), build_pipeline()
    pipeline.coverage.watch("binance", codec, ["AUSDT"], (), silent_after_ms=60_000)
    found = pipeline.feed(codec.decode(json.dumps({"stream": "ausdt@depth", "data": {
        "e": "depthUpdate", "E": T, "T": T, "s": "AUSDT", "U": 0, "u": 9, "pu": -1,
        "b": [["99", "2"]], "a": [["101", "3"]]}})))
    found += pipeline.feed(codec.on_rest_snapshot("AUSDT", json.dumps({
        "lastUpdateId": 5, "E": T, "bids": [["99", "1"]], "asks": [["101", "1"]]})))
    found += pipeline.feed(codec.decode(ticker("AUSDT", T + 10, 9, "99", "101")))  # agrees
    found += pipeline.feed(codec.decode(ticker("AUSDT", T + 20, 8, "98", "101")))  # another moment: not compared
    assert pipeline.state.books["AUSDT"].ticker_checks == 1 and not pipeline.state.books["AUSDT"].ticker_divergences
    found += pipeline.feed(codec.decode(ticker("AUSDT", T + 30, 9, "99.5", "101")))  # same id, other bid
    for i in range(1, 5):
        found += pipeline.feed(codec.decode(mark("AUSDT", T + i * 1000)))
    got = [a for a in found if a.kind == "coverage"]
    assert [(a.detail["reason"], a.symbol, a.severity) for a in got] == [("book_ticker_divergence", "AUSDT", "warning")]
    assert got[0].detail["sample"]["venue_bid"] == 99.5 and got[0].detail["sample"]["book_bid"] == 99.0
