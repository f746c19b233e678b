"""Faults that must cost themselves, never the daemon (issue: nothing the world sends stops it).

The store's faults are real SQLite faults: a full disk is ``PRAGMA max_page_count`` (SQLite
answers SQLITE_FULL, "database or disk is full", exactly as on a full file system) and a
lock is another connection holding ``BEGIN IMMEDIATE``. No test asserts on speed.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import sqlite3
import stat
import threading
import time

import pytest

from monitor.config import parse
from monitor.daemon import Daemon
from monitor.events import Anomaly
from monitor.ops import metrics
from monitor.ops.checkpoint import CHECKPOINT, KEY, Checkpointer, load_checkpoint, save_checkpoint
from monitor.store import Store
from tests.support import T0, TIMEOUT, ThreadedFeed, frame, start_daemon, stop_daemon, wait_for, write_config


def config(tmp_path, extra: str = ""):
    return parse(f"""
[[sources]]
name = "exchange"
url = "ws://127.0.0.1:9/feed"

[store]
path = "{tmp_path / 'pw.db'}"
{extra}

[metrics]
enabled = false
""")


def anomalies(n: int, start: int = 0) -> list[Anomaly]:
    return [Anomaly.make("feed_gap", T0 + i, 1.0, "warning", symbol=f"S{i}") for i in range(start, start + n)]


class Recorder:
    def __init__(self) -> None:
        self.got: list[Anomaly] = []

    async def handle(self, batch, incidents=()):
        self.got.extend(batch)

    async def drain(self, deadline):
        pass


async def flush_until(d: Daemon, predicate, what: str) -> None:
    """Drive the daemon's flusher (its retry timer is real monotonic time) until predicate."""
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await d._flush()
        await asyncio.sleep(0.05)


def test_full_disk_holds_anomalies_then_stores_them_when_space_returns(tmp_path):
    """SQLITE_FULL: the write is retried, anomalies are held (not lost, not fatal), /healthz
    says why, and everything is stored once the disk has room again. Before: exit 1 with
    'cannot rollback - no transaction is active'."""
    d = Daemon(config(tmp_path), sinks=[rec := Recorder()])

    async def main():
        d.store.write_anomalies(anomalies(1, start=10_000))  # the schema and a page in use
        pages = d.store.db.execute("PRAGMA page_count").fetchone()[0]
        d.store.db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full now
        d.add_anomalies(anomalies(3000))
        await d._flush()
        assert d.held.errors == 1 and len(d.held.queue) == 3000 and not rec.got
        assert "full" in d.held.last_error
        ok, why = metrics.health(d)
        assert not ok and "store not writable" in why and "3000 anomalies held" in why
        d.add_anomalies(anomalies(5, start=3000))  # detection goes on meanwhile
        d.store.db.execute("PRAGMA max_page_count = 1073741823")  # space again
        await flush_until(d, lambda: not d.held.queue, "the held anomalies to be stored")
        assert metrics.health(d) == (True, "ok\n")

    asyncio.run(main())
    assert len(Store.reader(tmp_path / "pw.db").anomalies(limit=None)) == 3006
    assert len(rec.got) == 3005  # the sinks get every anomaly, after it is stored


def test_write_error_rolls_back_cleanly_and_reports_the_real_error(tmp_path):
    """A failed COMMIT already rolled back: the store must raise the real error, not
    'cannot rollback - no transaction is active'."""
    s = Store(tmp_path / "pw.db")
    s.write_anomalies(anomalies(1, start=10_000))
    pages = s.db.execute("PRAGMA page_count").fetchone()[0]
    s.db.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(sqlite3.OperationalError, match="full"):
        s.write_anomalies(anomalies(3000))
    s.db.execute("PRAGMA max_page_count = 1073741823")
    assert s.write_anomalies(anomalies(2)) == 2  # the connection is usable again


def test_store_locked_by_another_process_is_retried(tmp_path):
    """Another connection holds the write lock: the flusher keeps the batch and retries;
    nothing is lost and nothing raises. Before: the flusher died, exit 1."""
    d = Daemon(config(tmp_path), sinks=[rec := Recorder()])
    d.store.db.execute("PRAGMA busy_timeout = 50")
    other = sqlite3.connect(tmp_path / "pw.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")

    async def main():
        d.add_anomalies(anomalies(7))
        await d._flush()
        assert d.held.errors >= 1 and len(d.held.queue) == 7
        assert "locked" in d.held.last_error
        other.execute("COMMIT")
        await flush_until(d, lambda: not d.held.queue, "the batch to be written after the lock")

    asyncio.run(main())
    assert len(rec.got) == 7 and len(Store.reader(tmp_path / "pw.db").anomalies()) == 7


def test_past_max_held_the_oldest_spill_to_a_file_and_come_back(tmp_path):
    """A long outage: held anomalies are bounded; the oldest go to spill.jsonl (0600), the
    stop spills the rest, and the next start stores them all."""
    cfg = config(tmp_path, "max_held = 100")
    d = Daemon(cfg, sinks=[])
    d.store.write_anomalies(anomalies(1, start=10_000))
    d.store.db.execute("PRAGMA busy_timeout = 10")
    other = sqlite3.connect(tmp_path / "pw.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # the outage: every write is refused

    async def main():
        for i in range(0, 1000, 50):
            d.add_anomalies(anomalies(50, start=i))
            await d._flush()
        assert len(d.held.queue) == 100 and d.held.spilled == 900 and d.held.lost == 0
        assert d.held.spill_all() == 100

    asyncio.run(main())
    other.execute("COMMIT")
    spill = tmp_path / "spill.jsonl"
    assert stat.S_IMODE(spill.stat().st_mode) == 0o600
    d.store.close()

    d2 = Daemon(cfg, sinks=[])  # the next start: a healthy store imports the spill file

    async def again():
        await flush_until(d2, lambda: not spill.exists(), "the spill file to be imported")

    asyncio.run(again())
    assert d2.held.unspilled == 1000
    assert len(Store.reader(tmp_path / "pw.db").anomalies(limit=None)) == 1001


def test_a_frame_that_makes_decoding_raise_costs_only_itself(tmp_path):
    """Any exception while handling a frame (here a RecursionError from a codec) is counted
    and the next frame is processed. Before: the processor died and took the daemon."""
    d = Daemon(config(tmp_path), sinks=[])

    class Exploding:
        def __init__(self, inner):
            self.inner, self.stats = inner, inner.stats

        def decode(self, frame):
            if frame.startswith(b"["):
                raise RecursionError("maximum recursion depth exceeded")
            return self.inner.decode(frame)

    d.codecs["exchange"] = Exploding(d.codecs["exchange"])
    d._handle_safely("exchange", b"[" * 1000 + b"]" * 1000)
    d._handle_safely("exchange", frame({"type": "book", "symbol": "X", "ts": T0, "seq": 1, "snapshot": True}).encode())
    d._handle_safely("exchange", frame({"type": "book", "symbol": "X", "ts": T0 + 50, "seq": 3}).encode())
    assert d.frames_failed["exchange"] == 1
    assert [a.kind for a in d._pending] == ["feed_gap"]


# -- checkpoints ---------------------------------------------------------------------------

MARKER = "/nonexistent"


class Planted:
    """A pickle payload that would create a file when unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_checkpoint_not_signed_by_us_is_refused_never_unpickled(tmp_path, capsys):
    cfg = config(tmp_path)
    d = Daemon(cfg, sinks=[])
    path = save_checkpoint(cfg, d.pipeline)
    assert load_checkpoint(cfg) is not None
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / KEY).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "pw.db").stat().st_mode) == 0o640

    marker = tmp_path / "pwned"
    evil = pickle.dumps({"fingerprint": "x", "pipeline": Planted(str(marker))})
    for content in (evil,  # a plain pickle (the old format, or planted)
                    path.read_bytes()[:40] + evil,  # our header, another body: the MAC fails
                    b"garbage"):
        path.write_bytes(content)
        assert load_checkpoint(cfg) is None
        assert not marker.exists()
    out = capsys.readouterr()
    assert "checkpoint_refused" in out.err + out.out and "Traceback" not in out.err


GATE = "PERPWATCH_TEST_GATE"


class Gated:
    """Pickling blocks until a gate file exists: proves the writer is not the event loop."""

    def __init__(self, gate: str) -> None:
        self.gate = gate

    def __getstate__(self):
        while not os.path.exists(self.gate):
            time.sleep(0.01)
        return {"gate": self.gate}


def test_periodic_checkpoint_is_written_by_a_child_not_the_loop(tmp_path):
    """start() returns while the state is still being pickled (the child waits for a gate
    file the parent creates only afterwards). Before: pickle ran on the loop (9 s at 1M
    accounts); here that would wait forever."""
    cfg = config(tmp_path)
    d = Daemon(cfg, sinks=[])
    gate = tmp_path / "gate"
    d.pipeline.state.gated = Gated(str(gate))
    c = Checkpointer(cfg)
    assert c.start(d.pipeline, {}) is True
    assert c.running and not (tmp_path / CHECKPOINT).exists()
    assert c.start(d.pipeline, {}) is False and c.skipped == 1  # one writer at a time
    gate.touch()
    wait_for(c.poll, "the checkpoint writer to finish")
    assert c.written == 1 and c.failed == 0
    restored = load_checkpoint(cfg)
    assert restored is not None and restored.pipeline.state.gated.gate == str(gate)


def test_checkpoint_writer_failure_is_reported_not_fatal(tmp_path):
    cfg = config(tmp_path)
    d = Daemon(cfg, sinks=[])
    d.pipeline.state.unpicklable = lambda: None  # a lambda cannot be pickled
    c = Checkpointer(cfg)
    assert c.start(d.pipeline, {})
    wait_for(c.poll, "the writer to exit")
    assert c.failed == 1 and "pickle" in c.last_error.lower()
    assert not list(tmp_path.glob("checkpoint.*.tmp"))


# -- end to end ------------------------------------------------------------------------------

def test_daemon_survives_a_deeply_nested_frame_end_to_end(tmp_path):
    """The 2 KB frame of the issue, then a gap: the gap is still detected and stored, and
    SIGTERM exits 0."""
    store = tmp_path / "pw.db"
    frames = ["[" * 1000 + "]" * 1000, '{"a":' * 1000 + "1" + "}" * 1000,
              frame({"type": "book", "symbol": "X", "ts": T0, "seq": 1, "snapshot": True}),
              frame({"type": "book", "symbol": "X", "ts": T0 + 50, "seq": 3})]
    with ThreadedFeed(frames) as feed:
        cfg = write_config(tmp_path / "pw.toml", feed.url, store)
        proc = start_daemon(cfg)
        try:
            wait_for(lambda: store.exists() and Store.reader(store).anomalies(kind="feed_gap"), "the feed_gap")
        finally:
            code, _, err = stop_daemon(proc)
    assert code == 0, err
    assert "Traceback" not in err


def test_sigterm_under_load_with_a_peer_that_never_answers_the_close(tmp_path):
    """A queue full of frames and a feed whose event loop is wedged (it will never answer our
    close frame): SIGTERM still drains within daemon.drain_timeout, exits 0 and leaves a
    checkpoint that loads. Before: the close alone waited 10 s for the peer."""
    from monitor.config import load

    store = tmp_path / "pw.db"
    book = [frame({"type": "book", "symbol": "X", "ts": T0, "seq": 1, "snapshot": True,
                   "bids": [[100 - i * 0.01, 1] for i in range(500)],
                   "asks": [[101 + i * 0.01, 1] for i in range(500)]})]
    load_frames = [frame(*[{"type": "trade", "symbol": "X", "ts": T0 + 1 + i, "price": 100.5, "size": 1,
                            "side": "buy"} for i in range(200)])] * 2000
    wedge = threading.Event()

    class WedgedFeed(ThreadedFeed):
        async def _handler(self, ws):
            self.connections += 1
            for f in book + load_frames:
                await ws.send(f)
            wedge.set()
            time.sleep(6)  # blocks this server's loop: no close answer, no pings

    with WedgedFeed([]) as feed:
        cfg = write_config(tmp_path / "pw.toml", feed.url, store,
                           '[daemon]\ndrain_timeout = "2s"\nqueue_frames = 4096\n')
        proc = start_daemon(cfg)
        wait_for(wedge.is_set, "the load to be sent")
        wait_for(lambda: store.exists(), "the store")
        proc.send_signal(15)
        out, err = proc.communicate(timeout=8)  # drain 2 s + start-up margin; the old close alone took 10 s
    assert proc.returncode == 0, err
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert logs[-1]["event"] in ("stopped", "checkpoint_continues") or any(l["event"] == "stopped" for l in logs)
    wait_for(lambda: (tmp_path / CHECKPOINT).exists(), "the checkpoint")
    wait_for(lambda: not list(tmp_path.glob("checkpoint.*.tmp")), "the writer to finish")
    assert load_checkpoint(load(cfg)) is not None


def test_a_stalled_stream_still_ticks_and_a_future_heartbeat_is_refused(tmp_path):
    """A gap, then one heartbeat 10 years ahead, then silence: the heartbeat is refused
    (counted), and event time follows wall time while the stream is silent, so the stuck
    book's critical still fires. Before: the clock froze at +10 years (or at the last
    event) and the critical never came."""
    store = tmp_path / "pw.db"
    now = int(time.time() * 1000)
    frames = [frame({"type": "book", "symbol": "X", "ts": now, "seq": 1, "snapshot": True}),
              frame({"type": "book", "symbol": "X", "ts": now + 50, "seq": 3}),
              frame({"type": "heartbeat", "ts": now + 10 * 365 * 86_400_000})]
    with ThreadedFeed(frames) as feed:
        cfg = write_config(tmp_path / "pw.toml", feed.url, store,
                           '[daemon]\nstall_after = "1s"\n[detectors.feed_gap]\nstuck_after_ms = 2000\n')
        proc = start_daemon(cfg)
        try:
            wait_for(lambda: store.exists() and any(a["severity"] == "critical" for a in
                                                    Store.reader(store).anomalies(kind="feed_gap")),
                     "the stuck book's critical feed_gap")
        finally:
            code, _, err = stop_daemon(proc)
    assert code == 0, err
    [critical] = [a for a in Store.reader(store).anomalies(kind="feed_gap") if a["severity"] == "critical"]
    assert critical["ts"] < now + 3_600_000  # on the stream's time, not ten years on
