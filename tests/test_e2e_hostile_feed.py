"""End to end (issue 11 rows 1 and 2): `perpwatch run` against a feed that sends the 2 KB
nested-brackets frame and deep objects, then closes cleanly (1000, 1001) on every connection.
The daemon survives both, reconnects, still detects, and SIGTERM exits 0."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from monitor.store import Store
from tests.support import T0, ThreadedFeed, frame, start_daemon, stop_daemon, wait_for

pytestmark = pytest.mark.e2e

SNAP = {"type": "book", "symbol": "BTC-PERP", "ts": T0, "seq": 1, "snapshot": True,
        "bids": [["64000", "1"]], "asks": [[64010, 2]]}
GAP = {"type": "book", "symbol": "BTC-PERP", "ts": T0 + 300, "seq": 5, "bids": [[63999, 1]], "asks": []}


class ClosingFeed(ThreadedFeed):
    """Sends its frames, then closes the websocket cleanly: 1000, 1001, 1000, ..."""

    async def _handler(self, ws) -> None:
        self.connections += 1
        n = self.connections
        for f in self._frames:
            await ws.send(f)
        await ws.close(1000 if n % 2 else 1001)


def test_hostile_frames_and_clean_closes_do_not_stop_the_daemon(tmp_path: Path):
    frames = [
        frame(SNAP),
        "[" * 1000 + "]" * 1000,  # the 2 KB frame
        '{"a":' * 1000 + "1" + "}" * 1000,
        '[{"type":"trade","symbol":' + "[" * 5000 + "]" * 5000 + "}]",
        json.dumps({"type": "t" * 10_000, "ts": T0}),
        json.dumps({"type": "book", "symbol": "X", "ts": T0, "seq": 2**64}),
        frame(GAP),
    ]
    store = tmp_path / "pw.db"
    with ClosingFeed(frames) as feed:
        cfg = tmp_path / "pw.toml"
        cfg.write_text(f"""
[[sources]]
name = "exchange"
url = "{feed.url}"
format = "perpwatch"
reconnect_max = "500ms"

[store]
path = "{store}"

[metrics]
enabled = false
""")
        proc = start_daemon(cfg)
        try:
            wait_for(lambda: feed.connections >= 4 or proc.poll() is not None, "four connections")
            wait_for(lambda: store.exists() and Store.reader(store).anomalies(kind="feed_gap"), "a stored feed_gap")
            assert proc.poll() is None, "the daemon exited"
        finally:
            code, out, err = stop_daemon(proc, signal.SIGTERM)
    assert code == 0, err
    assert feed.connections >= 4
    assert "Traceback" not in err
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    events = [e["event"] for e in logs]
    assert events.count("source_connected") >= 4
    assert "source_closed" in events and events[-1] == "stopped"
    dropped = {e["reason"] for e in logs if e["event"] == "frame_dropped"}
    assert dropped & {"too_deep", "malformed_frame"}
