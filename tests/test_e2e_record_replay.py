"""`perpwatch record` then `perpwatch replay` on Binance USD-M (issue 16, part 1).

A loopback websocket serves the real recording (one depth diff of SUSHIUSDT left out, so
the chain breaks and the book resyncs), a loopback REST server answers depth snapshots
the way the venue does (``lastUpdateId`` of the latest diff it has published), and the
real daemon records while it detects. Replaying the recording must give the daemon's
books and anomalies exactly: before, a Binance recording could not carry the snapshots,
so every book ended as depth_buffer_overflow.
"""

import asyncio
import json
import sqlite3
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.server import serve

from monitor.codecs.binance_usdm import BinanceUsdmCodec
from monitor.codecs.formats import codec_for
from monitor.config import parse
from monitor.daemon import Daemon, recorder_for
from monitor.pipeline import build_pipeline
from monitor.sources import RecordedItems, Recorder
from monitor.store import Store
from tests.support import TIMEOUT, perpwatch
from tests.test_e2e_binance import load_frames

pytestmark = pytest.mark.e2e


class Venue:
    """What has been published: the latest diff per symbol, which the REST answer follows."""

    def __init__(self) -> None:
        self.latest: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.requests = 0


def rest_server(venue: Venue) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            u = urlsplit(self.path)
            symbol = parse_qs(u.query).get("symbol", [""])[0]
            with venue.lock:
                venue.requests += 1
                d = venue.latest.get(symbol)
            if u.path != "/fapi/v1/depth" or d is None:
                self.send_response(400)
                self.end_headers()
                return
            body = json.dumps({"lastUpdateId": d["U"], "E": d["E"], "T": d["E"],
                               "bids": [["0.0001", "1"]], "asks": [["99999", "1"]]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


def with_a_gap(frames: list[str]) -> list[str]:
    """The recording without one of SUSHIUSDT's late depth diffs (the 150th of ~190 in the
    full recording; in the excerpt CI has without ../shared, 4/5 of the way): its pu chain
    breaks there."""
    diffs = sum(1 for f in frames if (d := json.loads(f)["data"]).get("e") == "depthUpdate" and d["s"] == "SUSHIUSDT")
    drop = 150 if diffs >= 190 else max(3, diffs * 4 // 5)
    n, out = 0, []
    for f in frames:
        d = json.loads(f)["data"]
        if d.get("e") == "depthUpdate" and d["s"] == "SUSHIUSDT":
            n += 1
            if n == drop:
                continue
        out.append(f)
    return out


def record_live(tmp_path, frames: list[str]) -> Daemon:
    venue = Venue()
    httpd = rest_server(venue)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    symbols = sorted({json.loads(f)["data"]["s"] for f in frames if '"depthUpdate"' in f})

    async def handler(ws):
        for i, f in enumerate(frames):
            if i == len(frames) // 2:  # every book synced before the gap comes
                while venue.requests < len(symbols):
                    await asyncio.sleep(0.02)
            d = json.loads(f)["data"]
            if d.get("e") == "depthUpdate":
                with venue.lock:
                    venue.latest[d["s"]] = d
            await ws.send(f)
            if i % 10 == 0:
                await asyncio.sleep(0.01)  # paced, so snapshots are fetched while diffs flow
        await ws.wait_closed()

    async def main():
        async with serve(handler, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            cfg = parse(f"""
[[sources]]
name = "binance"
format = "binance-usdm"
url = "ws://127.0.0.1:{port}"
rest_url = "http://127.0.0.1:{httpd.server_address[1]}"
symbols = {json.dumps(symbols)}
[store]
path = "{tmp_path / 'live.db'}"
[metrics]
enabled = false
""")
            daemon = Daemon(cfg, recorder=recorder_for(cfg, tmp_path / "rec"))
            task = asyncio.create_task(daemon.run(install_signals=False))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT * 2
            books = daemon.pipeline.state.books
            while (daemon.status["binance"].frames < len(frames) or daemon._queue.qsize()
                   or len(books) < len(symbols) or not all(b.reliable for b in books.values())):
                assert loop.time() < deadline, daemon.status["binance"].frames
                await asyncio.sleep(0.05)
            daemon.request_stop()
            assert await task == 0
            return daemon

    try:
        return asyncio.run(main())
    finally:
        httpd.shutdown()
        httpd.server_close()


def stored(db) -> list[tuple]:
    return sorted((a["id"], a["kind"], a["ts"], a["symbol"]) for a in Store.reader(db).anomalies(limit=None))


def test_replay_of_a_recorded_binance_session_gives_the_daemons_books_and_anomalies(tmp_path):
    """perpwatch record over loopback (websocket + REST), then perpwatch replay: same books, same anomalies."""
    frames = with_a_gap(load_frames())
    daemon = record_live(tmp_path, frames)
    live_books = {s: (b.bids, b.asks, b.reliable) for s, b in daemon.pipeline.state.books.items()}
    assert live_books and all(r for _, _, r in live_books.values()), "every book synced live"
    assert daemon.recorder.items >= len(frames) + len(live_books)  # the frames and the snapshots
    live = stored(tmp_path / "live.db")
    assert any(k == "feed_gap" and s == "SUSHIUSDT" for _, k, _, s in live), live

    # the same recording in process: the books the daemon held
    rec = RecordedItems(tmp_path / "rec")
    assert rec.container == "perpwatch" and rec.sources == {"binance": "binance-usdm"}
    codec, pipeline = codec_for("binance-usdm"), build_pipeline()
    pipeline.run_items(rec, lambda source: codec)
    assert {s: (b.bids, b.asks, b.reliable) for s, b in pipeline.state.books.items()} == live_books

    # and through the CLI, into a fresh store
    (tmp_path / "replay.toml").write_text(f'[store]\npath = "{tmp_path / "replay.db"}"\n[metrics]\nenabled = false\n')
    r = perpwatch("replay", str(tmp_path / "rec"), "--config", str(tmp_path / "replay.toml"), "--json",
                  timeout=TIMEOUT * 3)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["books_synced"] == sorted(live_books) and summary["books_unsynced"] == []
    assert "depth_buffer_overflow" not in summary["dropped"]
    assert stored(tmp_path / "replay.db") == live
    inc = sqlite3.connect(tmp_path / "replay.db").execute("SELECT count(*) FROM incidents").fetchone()[0]
    assert inc == sqlite3.connect(tmp_path / "live.db").execute("SELECT count(*) FROM incidents").fetchone()[0]


def test_record_refuses_an_out_that_is_a_file(tmp_path):
    """perpwatch record --out on a regular file: one line naming --out, exit 2."""
    (tmp_path / "f").write_text("x")
    (tmp_path / "c.toml").write_text(f'[[sources]]\nname = "a"\nurl = "ws://127.0.0.1:9/"\n'
                                     f'[store]\npath = "{tmp_path / "s.db"}"\n')
    r = perpwatch("record", "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "f"))
    assert r.returncode == 2 and "--out" in r.stderr and "Traceback" not in r.stderr


def test_a_recording_cut_off_mid_gzip_replays_what_was_flushed(tmp_path):
    """A killed recorder leaves a cut gzip: the reader stops at the cut, no error."""
    rec = Recorder(tmp_path, {"x": "perpwatch"})
    for i in range(100):
        rec.write("x", '{"type":"heartbeat","ts":%d}' % (1_732_400_000_000 + i), i)
    rec.flush()
    rec.close()
    data = rec.path.read_bytes()
    rec.path.write_bytes(data[: len(data) - 12])  # the gzip trailer (and a little more) gone
    items = list(RecordedItems(rec.path))
    assert 0 < len(items) <= 100 and items[0] == ("x", b'{"type":"heartbeat","ts":1732400000000}', 0)


def test_binance_snapshot_without_a_symbol_goes_to_the_book_it_bridges():
    """hftbacktest keeps the REST body alone: it is matched by lastUpdateId to the waiting book."""
    c = BinanceUsdmCodec()
    for s, (u0, u1) in (("AUSDT", (100, 110)), ("BUSDT", (9_000, 9_010))):
        c.decode(json.dumps({"e": "depthUpdate", "E": 1_626_992_741_037, "s": s, "U": u0, "u": u1, "pu": u0 - 1,
                             "b": [], "a": []}))
    body = json.dumps({"lastUpdateId": 9_005, "E": 1_626_992_741_000, "bids": [["1", "1"]], "asks": []})
    out = c.on_rest_snapshot(None, body)
    assert [(b.symbol, b.snapshot) for b in out] == [("BUSDT", True), ("BUSDT", False)]
    assert c.needs_snapshot() == {"AUSDT"}
    late = c.on_rest_snapshot(None, json.dumps({"lastUpdateId": 50_000, "E": 1_626_992_741_000}))
    assert [(b.symbol, b.snapshot) for b in late] == [("AUSDT", True)]  # the only book waiting
    assert c.on_rest_snapshot(None, body) == [] and c.stats.dropped["snapshot_unmatched"] == 1
