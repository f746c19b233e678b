"""End to end on Binance USD-M: the real recording replayed over a loopback websocket in
the venue's combined-stream framing, REST snapshots from a loopback HTTP server, the
real daemon (in-process) building books that match a reference replay."""

import asyncio
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.server import serve

from monitor.codecs.binance_usdm import BinanceUsdmCodec
from monitor.config import parse
from monitor.daemon import Daemon
from monitor.state import MarketState
from tests.support import TIMEOUT
from tests.test_codec_binance import EXCERPT, RECORDING, read_recording

pytestmark = pytest.mark.e2e


def load_frames() -> list[str]:
    if RECORDING.exists():
        return read_recording(RECORDING)
    return EXCERPT.read_text(encoding="utf-8").splitlines()


def first_depth(frames: list[str]) -> dict[str, dict]:
    """Per symbol, its first depthUpdate: the snapshot server answers inside its [U, u]."""
    out: dict[str, dict] = {}
    for f in frames:
        d = json.loads(f)["data"]
        if d.get("e") == "depthUpdate":
            out.setdefault(d["s"], d)
    return out


def snapshot_body(d: dict) -> bytes:
    return json.dumps({"lastUpdateId": d["U"], "E": d["E"] - 1, "T": d["E"] - 1,
                       "bids": [["0.0001", "1"]], "asks": [["99999", "1"]]}).encode()


class SnapshotServer:
    def __init__(self, firsts: dict[str, dict]) -> None:
        self.requests: list[str] = []
        firsts_, requests = firsts, self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                u = urlsplit(self.path)
                symbol = parse_qs(u.query).get("symbol", [""])[0]
                requests.append(symbol)
                if u.path != "/fapi/v1/depth" or symbol not in firsts_:
                    self.send_response(400)
                    self.end_headers()
                    return
                body = snapshot_body(firsts_[symbol])
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


def reference_books(frames: list[str], firsts: dict[str, dict]) -> MarketState:
    codec, state = BinanceUsdmCodec(), MarketState()
    for f in frames:
        for ev in codec.decode(f):
            state.apply(ev)
    for symbol, d in firsts.items():
        for ev in codec.on_rest_snapshot(symbol, snapshot_body(d)):
            state.apply(ev)
    return state


def test_daemon_builds_binance_books_matching_reference(tmp_path):
    """Books built by the daemon from the replayed recording equal the reference replay."""
    frames = load_frames()
    firsts = first_depth(frames)
    n_depth = sum(1 for f in frames if '"depthUpdate"' in f)
    paths: list[str] = []

    async def handler(ws):
        paths.append(ws.request.path)
        for f in frames:
            await ws.send(f)
        await ws.wait_closed()

    async def main(rest_url: str):
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            cfg = parse(f"""
[[sources]]
name = "binance"
format = "binance-usdm"
url = "ws://127.0.0.1:{port}"
rest_url = "{rest_url}"
symbols = {json.dumps(sorted(firsts))}
[store]
path = "{tmp_path / 'pw.db'}"
[metrics]
enabled = false
""")
            daemon = Daemon(cfg)
            task = asyncio.create_task(daemon.run(install_signals=False))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT
            while daemon.pipeline.counts.get("Book", 0) < n_depth + len(firsts):
                assert loop.time() < deadline, daemon.pipeline.counts
                await asyncio.sleep(0.05)
            daemon.request_stop()
            assert await task == 0
            return daemon

    with SnapshotServer(firsts) as rest:
        daemon = asyncio.run(main(rest.url))
    assert sorted(set(rest.requests)) == sorted(firsts)
    assert paths and paths[0].startswith("/stream?streams=")
    ref = reference_books(frames, firsts)
    got = daemon.pipeline.state.books
    assert sorted(got) == sorted(firsts)
    for symbol, book in got.items():
        assert book.reliable and book.gaps == 0
        assert book.bids == ref.books[symbol].bids and book.asks == ref.books[symbol].asks
        assert book.pulled > 0  # L2 liquidity removal is measured: the input of inferred cancels
    assert daemon.codecs["binance"].stats.unknown  # kline counted, not fatal
