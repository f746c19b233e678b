"""Operations: the systemd unit verifies, sd_notify over a real socket, metrics over HTTP."""

import json
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support import ROOT, T0, TIMEOUT, ThreadedFeed, frame, start_daemon, stop_daemon, wait_for, write_config

UNIT = ROOT / "config" / "perpwatch.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent (Debian: apt install systemd)")
def test_unit_file_verifies(tmp_path):
    """systemd-analyze verify accepts the unit (ExecStart pointed at this venv's perpwatch)."""
    exe = Path(sys.executable).parent / "perpwatch"
    unit = tmp_path / "perpwatch.service"
    unit.write_text(UNIT.read_text().replace("/opt/perpwatch/.venv/bin/perpwatch", str(exe)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 0 and "perpwatch.service" not in r.stderr, r.stderr
    text = UNIT.read_text()
    for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "DynamicUser=yes", "StateDirectory=",
                "ProtectSystem=strict", "NoNewPrivileges=yes", "SystemCallFilter=@system-service",
                "RestrictAddressFamilies=", "LoadCredential="):
        assert key in text, key


def gap_feed():
    return [frame({"type": "book", "symbol": "BTC-PERP", "ts": T0, "seq": 1, "snapshot": True,
                   "bids": [[100, 1]], "asks": [[101, 1]]}),
            frame({"type": "book", "symbol": "BTC-PERP", "ts": T0 + 100, "seq": 3})]


def test_sd_notify_ready_watchdog_stopping(tmp_path):
    """READY=1 after start, WATCHDOG=1 from the loop, STOPPING=1 on SIGTERM, over a real socket."""
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(TIMEOUT)
    got: list[str] = []
    try:
        with ThreadedFeed(gap_feed()) as feed:
            cfg = write_config(tmp_path / "pw.toml", feed.url, tmp_path / "pw.db")
            proc = start_daemon(cfg, env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"})
            try:
                while not any("WATCHDOG=1" in m for m in got):
                    got.append(sock.recv(4096).decode())
            finally:
                code, _, err = stop_daemon(proc)
        sock.settimeout(0.5)
        try:
            while True:
                got.append(sock.recv(4096).decode())
        except (socket.timeout, TimeoutError):
            pass
    finally:
        sock.close()
    assert code == 0, err
    ready = [m for m in got if "READY=1" in m]
    assert ready and "STATUS=" in ready[0]
    assert any("STOPPING=1" in m for m in got)
    assert got.index(ready[0]) < next(i for i, m in enumerate(got) if "WATCHDOG=1" in m)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_metrics_and_healthz_serve_real_counts(tmp_path):
    """/metrics counts the events and anomalies of a real run; /healthz answers ok."""
    port = free_port()
    with ThreadedFeed(gap_feed()) as feed:
        cfg = write_config(tmp_path / "pw.toml", feed.url, tmp_path / "pw.db")
        cfg.write_text(cfg.read_text().replace("[metrics]\nenabled = false",
                                               f'[metrics]\nenabled = true\nlisten = "127.0.0.1:{port}"'))
        proc = start_daemon(cfg)
        try:
            def scrape() -> str:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                        return r.read().decode()
                except OSError:
                    return ""
            text = wait_for(lambda: (t := scrape()) and 'perpwatch_anomalies_total{kind="feed_gap"} 1.0' in t and t,
                            "metrics with the feed_gap counted")
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                assert r.read() == b"ok\n"
            from tests.support import perpwatch

            live = json.loads(perpwatch("status", "--config", str(cfg), "--json").stdout)
            assert live["metrics"] == "up" and live["sources"]["exchange"]["connected"] == 1.0
        finally:
            code, _, err = stop_daemon(proc)
    assert code == 0, err
    assert 'perpwatch_events_total{type="Book"} 2.0' in text
    assert 'perpwatch_book_gaps_total{symbol="BTC-PERP"} 1.0' in text
    assert 'perpwatch_source_connected{source="exchange"} 1.0' in text
    assert 'perpwatch_frame_event_lag_seconds_count 2.0' in text  # one sample per frame


def test_checkpoint_survives_a_restart(tmp_path):
    """Stopping writes a checkpoint; the next start resumes the same detector state."""
    from monitor.config import load
    from monitor.ops.jobs import CHECKPOINT, load_checkpoint

    with ThreadedFeed(gap_feed()) as feed:
        cfg = write_config(tmp_path / "pw.toml", feed.url, tmp_path / "pw.db")
        proc = start_daemon(cfg)
        try:
            wait_for(lambda: (tmp_path / "pw.db").exists(), "the store")
            wait_for(lambda: b'"feed_gap"' in subprocess.run(
                [sys.executable, "-m", "monitor.app.cli", "anomalies", "--config", str(cfg), "--json"],
                capture_output=True, cwd=ROOT).stdout, "the feed_gap")
        finally:
            code, _, err = stop_daemon(proc)
    assert code == 0, err
    assert (tmp_path / CHECKPOINT).exists()
    restored = load_checkpoint(load(cfg))
    assert restored is not None
    pipeline = restored.pipeline
    book = pipeline.state.books["BTC-PERP"]
    assert book.gaps == 1 and not book.reliable and book.last_ts == T0 + 100
    with open(tmp_path / CHECKPOINT, "rb") as f:  # signed, not a bare pickle
        assert f.read(8) == b"PWCKPT3\n"
    changed = load(cfg)
    changed.detectors["feed_gap"] = {"stuck_after_ms": 5}
    assert load_checkpoint(changed) is None  # other detector settings: start cold


def test_retention_deletes_only_old_rows(tmp_path):
    """Retention purges anomalies older than the cutoff and delivered notifications only."""
    from alerts.outbox import Outbox
    from monitor.events import Anomaly
    from monitor.store import Store

    store = Store(tmp_path / "pw.db")
    store.write_anomalies([Anomaly.make("feed_gap", T0, 1, "warning", symbol="OLD"),
                           Anomaly.make("feed_gap", T0 + 86_400_000, 1, "warning", symbol="NEW")])
    assert store.purge_anomalies(T0 + 1) == 1
    assert [a["symbol"] for a in Store.reader(tmp_path / "pw.db").anomalies()] == ["NEW"]
    ob = Outbox(tmp_path / "pw.db")
    ob.enqueue("r", "i1", b"x", now=10.0)
    ob.enqueue("r", "i2", b"y", now=10.0)
    ob.mark_sent(ob.due(now=11.0)[0][0], now=11.0)
    assert ob.purge_sent(older_than=12.0) == 1 and ob.pending() == 1


def test_export_round_trips_through_polars(tmp_path):
    """export writes parquet and csv that polars reads back with the same rows."""
    import json

    import polars as pl

    from monitor.events import Anomaly
    from monitor.store import Store
    from tests.support import perpwatch

    cfg = write_config(tmp_path / "pw.toml", "ws://127.0.0.1:1/feed", tmp_path / "pw.db")
    Store(tmp_path / "pw.db").write_anomalies([Anomaly.make("cancel_burst", T0 + i, i, "warning", symbol="X",
                                                            detail={"z": i}) for i in range(5)])
    for fmt in ("parquet", "csv"):
        out = tmp_path / f"a.{fmt}"
        r = perpwatch("export", str(out), "--config", str(cfg), "--since", "1h", "--format", fmt)
        assert r.returncode == 0, r.stderr
        df = pl.read_parquet(out) if fmt == "parquet" else pl.read_csv(out)
        assert df.height == 5 and sorted(df["ts"].to_list()) == [T0 + i for i in range(5)]
        assert [json.loads(d)["z"] for d in df.sort("ts")["detail"]] == [0, 1, 2, 3, 4]
    r = perpwatch("status", "--config", str(cfg), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["anomalies_last_hour"] == 5
