"""Soak: an hour of the simulator's market through the real daemon; RSS and loop lag over time.

    .venv/bin/python benchmarks/soak.py [--seconds 3600] [--accounts 3000] [--sample 5]

Records ``--seconds`` of the labelled ``mixed`` scenario offline, then serves it over a
loopback websocket to ``perpwatch run`` (a subprocess, with a loopback webhook receiver)
as fast as the daemon reads it (TCP back-pressure paces the feed). Every ``--sample``
wall seconds it reads the daemon's RSS (/proc) and /metrics (loop lag, events, held
anomalies, task errors). Prints the samples and a verdict: RSS growth over the second
half of the run (flat means bounded state) and the worst loop lag. Run by hand.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import Collector, ThreadedFeed, scrape_metrics  # noqa: E402 (loopback feed, receiver)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3600)
    ap.add_argument("--accounts", type=int, default=3000)
    ap.add_argument("--sample", type=float, default=5.0)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pw-soak-"))
    rec = tmp / "mixed.jsonl"
    t = time.time()
    subprocess.run([sys.executable, "-m", "monitor.app.cli", "simulate", "--scenario", "mixed", "--speed", "0",
                    "--seconds", str(a.seconds), "--accounts", str(a.accounts), "--record", str(rec)],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    frames = rec.read_bytes().splitlines()
    events_sent = sum(len(msgspec.json.decode(f)) if f.startswith(b"[") else 1 for f in frames)
    print(f"recorded {len(frames):,} frames ({a.seconds:g} s of event time) in {time.time() - t:.0f} s")
    hook, feed = Collector().__enter__(), ThreadedFeed(frames).__enter__()
    metrics_port = free_port()
    cfg = tmp / "pw.toml"
    cfg.write_text(f"""
[[sources]]
name = "sim"
url = "{feed.url}"
stale_after = "1h"    # the feed idles after its last frame

[store]
path = "{tmp / 'pw.db'}"

[daemon]
max_ahead = "2h"      # the recording starts now and runs an hour ahead of the wall clock

[metrics]
listen = "127.0.0.1:{metrics_port}"

[[alerts.receivers]]
name = "hook"
url = "{hook.url}"

[[alerts.routes]]
receiver = "hook"
""")
    proc = subprocess.Popen([sys.executable, "-m", "monitor.app.cli", "run", "--config", str(cfg)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples: list[tuple[float, float, dict]] = []
    start = time.time()
    try:
        while True:
            time.sleep(a.sample)
            m = scrape_metrics(metrics_port)
            if not m:
                continue
            samples.append((time.time() - start, rss_mb(proc.pid), m))
            w, rss, m = samples[-1]
            print(f"{w:7.0f} s  RSS {rss:7.1f} MB  events {m.get('perpwatch_events_total', 0):>12,.0f}  "
                  f"loop lag {m.get('perpwatch_loop_lag_seconds', 0) * 1000:7.1f} ms  "
                  f"held {m.get('perpwatch_store_held_anomalies', 0):.0f}  "
                  f"task errors {m.get('perpwatch_task_errors_total', 0):.0f}", flush=True)
            if len(samples) >= 2 and samples[-1][2].get("perpwatch_events_total", 0) >= events_sent:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        feed.__exit__()
        hook.__exit__()
    half = samples[len(samples) // 2:]
    growth = half[-1][1] - half[0][1] if len(half) >= 2 else 0.0
    worst = max(s[2].get("perpwatch_loop_lag_seconds", 0) for s in samples) if samples else 0.0
    events = samples[-1][2].get("perpwatch_events_total", 0) if samples else 0
    print(f"\n{events:,.0f} events in {samples[-1][0]:.0f} s wall; RSS {samples[0][1]:.0f} -> {samples[-1][1]:.0f} MB "
          f"(second half {growth:+.1f} MB); worst loop lag sample {worst * 1000:.0f} ms; exit {code}")


if __name__ == "__main__":
    main()
