"""End to end: a real websocket feed on 127.0.0.1, `perpwatch run` as a subprocess."""

import json
import signal

import pytest

from monitor.store import Store
from tests.support import T0, ThreadedFeed, frame, perpwatch, start_daemon, stop_daemon, wait_for, write_config

pytestmark = pytest.mark.e2e

CONTRACT_FIELDS = {"id", "kind", "symbol", "account", "ts", "score", "severity", "detail"}


def feed_with_gap_and_garbage() -> list[str | bytes]:
    snap = {"type": "book", "symbol": "BTC-PERP", "ts": T0, "seq": 1, "snapshot": True,
            "bids": [["64000", "1"], ["63990", "3"]], "asks": [[64010, 2], [64020, 4]]}
    return [
        frame(snap),
        frame({"type": "book", "symbol": "BTC-PERP", "ts": T0 + 100, "seq": 2, "bids": [[64000, 0]], "asks": []},
              {"type": "trade", "symbol": "BTC-PERP", "ts": T0 + 120, "price": "64010", "size": "0.1", "side": "buy"}),
        "{this is not json",
        b"\xff\xfe\x00garbage",
        frame({"type": "trade", "symbol": "BTC-PERP", "ts": T0 + 200, "price": "NaN", "size": 1, "side": "buy"},
              {"type": "mystery", "ts": T0 + 200},
              {"type": "mark", "symbol": "BTC-PERP", "ts": T0 + 210, "mark": 64005, "index": 64000}),
        frame({"type": "book", "symbol": "BTC-PERP", "ts": T0 + 300, "seq": 5, "bids": [[63999, 1]], "asks": []}),
    ]


def test_gap_detected_stored_and_sigterm_drains(tmp_path):
    """A seq gap becomes a stored feed_gap; garbage is survived; SIGTERM exits 0 in time."""
    store = tmp_path / "state" / "pw.db"
    with ThreadedFeed(feed_with_gap_and_garbage) as feed:
        cfg = write_config(tmp_path / "pw.toml", feed.url, store)
        proc = start_daemon(cfg)
        try:
            wait_for(lambda: store.exists() and Store.reader(store).anomalies(kind="feed_gap"), "a stored feed_gap")
        finally:
            code, out, err = stop_daemon(proc, signal.SIGTERM)
    assert code == 0, err
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    events = [l["event"] for l in logs]
    assert "frame_dropped" in events and events[-1] == "stopped"
    assert "Traceback" not in err

    r = perpwatch("anomalies", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    [gap] = [a for a in rows if a["kind"] == "feed_gap"]
    assert set(gap) == CONTRACT_FIELDS
    assert gap["symbol"] == "BTC-PERP" and gap["account"] is None
    assert gap["ts"] == T0 + 300 and gap["severity"] == "warning"
    assert gap["detail"]["expected_seq"] == 3 and gap["detail"]["got_seq"] == 5

    for flags in (["--kind", "feed_gap"], ["--symbol", "BTC-PERP"], ["--since", "1h"]):
        r = perpwatch("anomalies", "--config", str(cfg), "--json", *flags)
        assert [a["id"] for a in json.loads(r.stdout)] == [gap["id"]], flags
    r = perpwatch("anomalies", "--config", str(cfg), "--json", "--kind", "cancel_burst")
    assert json.loads(r.stdout) == []
    r = perpwatch("anomalies", "--config", str(cfg))
    assert r.returncode == 0 and "feed_gap" in r.stdout
    r = perpwatch("anomalies", "--config", str(cfg), "--since", "soon")
    assert r.returncode == 2 and "--since" in r.stderr


def test_unreachable_source_retries_and_still_stops(tmp_path):
    """With the feed down the daemon keeps retrying and SIGTERM still exits 0."""
    with ThreadedFeed([]) as feed:
        url = feed.url
    cfg = write_config(tmp_path / "pw.toml", url, tmp_path / "pw.db")
    proc = start_daemon(cfg)
    wait_for(lambda: (tmp_path / "pw.db").exists(), "the store to be opened")
    code, _, err = stop_daemon(proc)
    assert code == 0, err


def test_oversized_frame_dropped_and_connection_reestablished(tmp_path):
    """A frame over max_frame_bytes is counted and dropped; the source reconnects and goes on."""
    big = json.dumps([{"type": "heartbeat", "ts": T0}] * 4000)
    gap = [frame({"type": "book", "symbol": "X", "ts": T0, "seq": 1, "snapshot": True}),
           frame({"type": "book", "symbol": "X", "ts": T0 + 50, "seq": 3})]
    sent = []

    def frames():
        sent.append(1)
        return [big] + gap if len(sent) == 1 else gap

    store = tmp_path / "pw.db"
    with ThreadedFeed(frames) as feed:
        cfg = write_config(tmp_path / "pw.toml", feed.url, store)
        text = cfg.read_text().replace('format = "perpwatch"', 'format = "perpwatch"\nmax_frame_bytes = 10000')
        cfg.write_text(text)
        proc = start_daemon(cfg)
        try:
            wait_for(lambda: store.exists() and Store.reader(store).anomalies(kind="feed_gap"), "feed_gap after reconnect")
        finally:
            code, _, err = stop_daemon(proc)
        assert feed.connections >= 2
    assert code == 0
    assert "frame_oversized" in err
