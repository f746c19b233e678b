"""/healthz and /metrics for the people who run perpwatch (issue 17): health reflects the
sources, the event loop and the store; process and build series; notification counters
by receiver; lag that cannot go negative; unknown messages by type."""

from __future__ import annotations

import socket
import time
import types
import urllib.error
import urllib.request

from monitor.ops import metrics
from tests.support import Collector, ThreadedFeed, frame, start_daemon, stop_daemon, wait_for, write_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def with_metrics(cfg, port: int, extra_source: str = "") -> None:
    text = cfg.read_text().replace("[metrics]\nenabled = false", f'[metrics]\nlisten = "127.0.0.1:{port}"')
    cfg.write_text(text.replace('format = "perpwatch"\n', f'format = "perpwatch"\n{extra_source}', 1))


def test_healthz_503_while_every_source_fails(tmp_path):
    """A daemon whose only source is refused answers 503 naming it once stale_after has
    passed (before: 200 while every source failed)."""
    port = free_port()
    cfg = write_config(tmp_path / "pw.toml", "ws://127.0.0.1:1/feed", tmp_path / "pw.db")
    with_metrics(cfg, port, 'stale_after = "1s"\nreconnect_max = "1s"\n')
    proc = start_daemon(cfg)
    try:
        code, body = wait_for(lambda: (r := get(port, "/healthz"))[0] == 503 and r, "/healthz to answer 503")
        assert "no source delivering" in body and "exchange: not connected" in body, body
    finally:
        code, _, err = stop_daemon(proc)
    assert code == 0, err


def test_healthz_reasons_unit():
    """Each reason on its own line: loop lag over the limit, a silent connected source; ok
    when one source of two delivers."""
    health, MAX_LOOP_LAG_S = metrics.health, getattr(metrics, "MAX_LOOP_LAG_S", 5.0)
    now = 1_000_000.0
    src = lambda name: types.SimpleNamespace(name=name, stale_after=types.SimpleNamespace(seconds=30.0))  # noqa: E731
    st = lambda connected, last: types.SimpleNamespace(connected=connected, last_frame_wall=last,  # noqa: E731
                                                      last_error="ConnectionRefusedError")
    held = types.SimpleNamespace(healthy=True)
    d = types.SimpleNamespace(held=held, loop_lag_s=MAX_LOOP_LAG_S + 1, started_wall=now - 100,
                              cfg=types.SimpleNamespace(sources=[src("a"), src("b")]),
                              status={"a": st(True, now - 40), "b": st(False, 0.0)})
    ok, text = health(d, now)
    assert not ok
    lines = text.splitlines()
    assert lines[0].startswith("event loop") and lines[1].startswith("no source delivering")
    assert "a: connected but silent, no frame for 40 s" in lines[1]
    assert "b: not connected, no frame since start (100 s), last error: ConnectionRefusedError" in lines[1]
    d.loop_lag_s = 0.0
    d.status["a"].last_frame_wall = now - 1
    assert health(d, now) == (True, "ok\n")


def test_metrics_for_operators(tmp_path):
    """Real daemon, real feed, real receiver: process_* and build info are exported;
    notification counters carry the receiver; a frame stamped ahead of wall time is
    counted apart and never makes the lag sum negative (before: -8702); unknown messages
    are broken down by type."""
    port = free_port()
    ahead_ts = int(time.time() * 1000) + 120_000  # the exchange's clock runs 2 minutes fast

    def frames():
        return [frame({"type": "book", "symbol": "BTC-PERP", "ts": ahead_ts, "seq": 1, "snapshot": True,
                       "bids": [[100, 1]], "asks": [[101, 1]]}),
                frame({"type": "book", "symbol": "BTC-PERP", "ts": ahead_ts + 100, "seq": 3}),
                frame({"type": "price_band", "ts": ahead_ts + 150}),
                frame({"type": "heartbeat", "ts": ahead_ts + 300})]

    with Collector() as hook, ThreadedFeed(frames) as feed:
        cfg = write_config(tmp_path / "pw.toml", feed.url, tmp_path / "pw.db", extra=f"""
[[alerts.receivers]]
name = "risk-hook"
url = "{hook.url}"

[[alerts.routes]]
receiver = "risk-hook"
min_severity = "info"
""")
        with_metrics(cfg, port)
        proc = start_daemon(cfg)
        try:
            want = ('perpwatch_notifications_sent_total{receiver="risk-hook"} 1.0',
                    'perpwatch_unknown_messages_total{source="exchange",type="price_band"} 1.0')
            text = wait_for(lambda: (t := get(port, "/metrics")[1]) and all(w in t for w in want) and t,
                            "the notification and the unknown type counted")
        finally:
            code, _, err = stop_daemon(proc)
    assert code == 0, err
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    assert samples["process_cpu_seconds_total"] > 0 and samples["process_resident_memory_bytes"] > 0
    assert any(k.startswith("perpwatch_build_info{") and 'version="' in k for k in samples)
    assert any(k.startswith("python_info{") for k in samples)
    assert samples["perpwatch_frame_event_lag_seconds_sum"] >= 0
    assert samples["perpwatch_frames_ahead_of_wall_total"] >= 1
    assert samples["perpwatch_frame_event_ahead_max_seconds"] > 60
