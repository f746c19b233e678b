"""SIGTERM under load: how long the daemon takes to stop, and whether it leaves a checkpoint.

    .venv/bin/python benchmarks/sigterm.py [--accounts 1000000] [--backlog 200000] [--drain 8s]

A loopback feed sends one cross position per account (``--accounts``), then a backlog of
``--backlog`` events in expensive frames (books of 500 levels a side) while a receiver
never answers; SIGTERM arrives when the daemon has taken the accounts in. Prints the
wall time from SIGTERM to exit, the exit code, the drain's log lines (frames left
unprocessed, spilled anomalies, checkpoint state) and how long until the stop's
checkpoint (written by a forked child) was complete and loadable. Run by hand.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monitor.config import load  # noqa: E402
from monitor.ops.checkpoint import CHECKPOINT, load_checkpoint  # noqa: E402
from tests.support import Collector, ThreadedFeed, scrape_metrics, start_daemon, write_config  # noqa: E402

T0 = int(time.time() * 1000)


def frames(accounts: int, backlog: int) -> list[bytes]:
    out = [msgspec.json.encode({"type": "book", "symbol": "X", "ts": T0, "seq": 1, "snapshot": True,
                                "bids": [[100 - i * 0.01, 1] for i in range(500)],
                                "asks": [[101 + i * 0.01, 1] for i in range(500)]})]
    for start in range(0, accounts, 1000):
        out.append(msgspec.json.encode([
            {"type": "position", "account": f"a{i}", "symbol": "X", "ts": T0 + i // 1000, "size": 1.0,
             "entry_price": 100.0, "leverage": 5.0} for i in range(start, min(accounts, start + 1000))]))
    seq = 2
    for k in range(backlog // 1000):
        out.append(msgspec.json.encode([
            {"type": "book", "symbol": "X", "ts": T0 + accounts // 1000 + k, "seq": seq + j,
             "bids": [[100 - (j % 500) * 0.01, 2]], "asks": []} for j in range(1000)]))
        seq += 1000
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--backlog", type=int, default=200_000)
    ap.add_argument("--drain", default="8s")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pw-sigterm-"))
    port = 19464
    with Collector(gate=__import__("threading").Event()) as hook, ThreadedFeed(frames(a.accounts, a.backlog)) as feed:
        cfg = write_config(tmp / "pw.toml", feed.url, tmp / "pw.db", f"""
[daemon]
drain_timeout = "{a.drain}"
max_accounts = {a.accounts + 1000}
queue_frames = 4096
[[alerts.receivers]]
name = "never"
url = "{hook.url}"
[[alerts.routes]]
receiver = "never"
""")
        cfg.write_text(cfg.read_text().replace("[metrics]\nenabled = false", f'[metrics]\nlisten = "127.0.0.1:{port}"'))
        proc = start_daemon(cfg)
        while scrape_metrics(port).get("perpwatch_accounts", 0) < a.accounts:
            time.sleep(0.5)
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        stopped = time.monotonic() - t
        while list(tmp.glob("checkpoint.*.tmp")) or not (tmp / CHECKPOINT).exists():
            time.sleep(0.1)
        written = time.monotonic() - t
    logs = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    keep = ("draining", "frames_unprocessed_at_stop", "anomalies_spilled_at_stop", "checkpoint_continues",
            "checkpoint_skipped", "sink_drain_timeout", "notifications_pending_at_stop", "stopped")
    for entry in logs:
        if entry["event"] in keep:
            print({k: v for k, v in entry.items() if k not in ("level", "timestamp")})
    ok = load_checkpoint(load(cfg)) is not None
    print(f"{a.accounts:,} accounts: SIGTERM -> exit {proc.returncode} in {stopped:.2f} s "
          f"(drain_timeout {a.drain}); the stop's checkpoint complete after {written:.1f} s, loads: {ok}")


if __name__ == "__main__":
    main()
