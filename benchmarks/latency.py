"""Alert latency: wall time from a triggering frame's send to the webhook POST's arrival.

    .venv/bin/python benchmarks/latency.py [--rate 100000] [--seconds 20] [--gaps-per-s 1]
                                           [--incident-window 0s]

A loopback websocket feed streams ~``rate`` events/s (1,000-event frames of book deltas,
trades and marks over 20 symbols); every 1/``gaps-per-s`` s one symbol's sequence jumps
(a gap: its anomaly is decided on arrival). The real daemon runs as a subprocess with
``group_wait = "0s"`` and ``group_interval = "5s"``; a loopback HTTP receiver records each
POST. Latency per anomaly = the arrival of the first POST carrying it - the send time of
the frame holding its gap, reported by the kind of notification that carried it: ``first``
(a new incident) and ``escalation`` go at once; ``update`` (a later gap joining an open
incident: ``--incident-window 10m``) waits for group_interval by design. Prints p50/p99
per kind and the feed rate achieved. Run by hand; CI never runs benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
from websockets.asyncio.server import serve

ROOT = Path(__file__).resolve().parents[1]
T0 = int(time.time() * 1000)


def receiver():
    arrivals: dict[tuple[str, int], tuple[float, str]] = {}  # (symbol, event ts) -> (first arrival, notification)

    class H(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            now = time.time()
            p = json.loads(body)
            for a in p["anomalies"]:
                if a["kind"] == "feed_gap":
                    arrivals.setdefault((a["symbol"], a["ts"]), (now, p.get("notification") or "first"))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, arrivals


async def feed(rate: int, seconds: float, gaps_per_s: float, sent: dict[str, float], ready: asyncio.Event):
    rng = random.Random(1)
    symbols = [f"S{i:02d}-PERP" for i in range(20)]
    seq = dict.fromkeys(symbols, 1)

    async def handler(ws):
        await ws.send(msgspec.json.encode([{"type": "book", "symbol": s, "ts": T0, "seq": 1, "snapshot": True,
                                            "bids": [[100 - k * 0.01, 5] for k in range(1, 20)],
                                            "asks": [[100 + k * 0.01, 5] for k in range(1, 20)]}
                                           for s in symbols]).decode())
        frames_per_s = max(1, rate // 1000)
        n, start, next_gap = 0, time.time(), time.time() + 1.0
        gi = 0
        while time.time() - start < seconds:
            events = []
            now_ms = int(time.time() * 1000)
            gap_symbol = None
            if time.time() >= next_gap:
                gap_symbol = symbols[gi % len(symbols)]
                gi += 1
                next_gap += 1.0 / gaps_per_s
            for i in range(1000):
                s = symbols[i % len(symbols)]
                seq[s] += 2 if (s == gap_symbol and i < len(symbols)) else 1
                events.append({"type": "book", "symbol": s, "ts": now_ms, "seq": seq[s],
                               "bids": [[100 - rng.randint(1, 19) * 0.01, rng.randint(0, 9)]]})
            if gap_symbol is not None:
                sent[(gap_symbol, now_ms)] = time.time()
                # a fresh snapshot right after, so the symbol can gap again later
                seq[gap_symbol] += 1
                events.append({"type": "book", "symbol": gap_symbol, "ts": now_ms, "seq": seq[gap_symbol],
                               "snapshot": True, "bids": [[99.99, 5]], "asks": [[100.01, 5]]})
            await ws.send(msgspec.json.encode(events).decode())
            n += 1
            delay = start + n / frames_per_s - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
        sent["__rate__"] = n * 1000 / (time.time() - start)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, max_size=None) as server:
        feed.port = server.sockets[0].getsockname()[1]
        ready.set()
        await asyncio.sleep(seconds + 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--gaps-per-s", type=float, default=1.0)
    ap.add_argument("--incident-window", default="0s", help="0s: every gap a new incident; 10m: later gaps on a "
                    "symbol are updates of its open incident")
    args = ap.parse_args()
    httpd, arrivals = receiver()
    sent: dict = {}  # (symbol, event ts) -> send time; "__rate__" -> events/s achieved
    tmp = Path(tempfile.mkdtemp(prefix="perpwatch-latency-"))

    async def run():
        ready = asyncio.Event()
        task = asyncio.create_task(feed(args.rate, args.seconds, args.gaps_per_s, sent, ready))
        await ready.wait()
        cfg = tmp / "pw.toml"
        cfg.write_text(f"""
[[sources]]
name = "bench"
url = "ws://127.0.0.1:{feed.port}/"
[store]
path = "{tmp / 'pw.db'}"
[metrics]
enabled = false
[logging]
level = "warning"
[alerts]
incident_window = "{args.incident_window}"
[[alerts.receivers]]
name = "hook"
url = "http://127.0.0.1:{httpd.server_address[1]}/hook"
[[alerts.routes]]
receiver = "hook"
group_wait = "0s"
group_interval = "5s"
""")
        proc = subprocess.Popen([sys.executable, "-m", "monitor.app.cli", "run", "--config", str(cfg)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(args.seconds + 5)
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        task.cancel()

    asyncio.run(run())
    httpd.shutdown()
    lat: dict[str, list[float]] = {}
    for key, t_sent in sent.items():
        if key in arrivals:
            t_arr, kind = arrivals[key]
            lat.setdefault(kind, []).append((t_arr - t_sent) * 1000)
    if not lat:
        print("no notifications arrived")
        return
    print(f"feed {sent.get('__rate__', 0):,.0f} events/s for {args.seconds:g} s; "
          f"{sum(len(v) for v in lat.values())} of {sum(1 for k in sent if k != '__rate__')} gaps notified")
    for kind, values in sorted(lat.items()):
        values.sort()
        p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
        print(f"latency event->POST ({kind}, {len(values)}): p50 {statistics.median(values):.1f} ms, "
              f"p99 {p99:.1f} ms, max {values[-1]:.1f} ms")


if __name__ == "__main__":
    main()
