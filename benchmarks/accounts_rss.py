"""Memory per account: N accounts, each with an account event and 1-2 positions, through the
Pipeline with every detector; prints the resident-set growth per account.

    .venv/bin/python benchmarks/accounts_rss.py [--accounts 200000] [--root DIR]

Events go through the native codec from JSON frames of 1,000 (as live: every decoded
event brings its own strings and floats). RSS is read from /proc/self/statm before and
after (current, not peak), the frames dropped as they go, so what remains is the state:
MarketState.accounts (the column store: account slots and the position pool), the exposure
graph, and the detectors' per-account rows and records. Issue 11: 1,423 B/account at
f43684d, ~770 after the column stores (fix-rss). ``--root`` runs another checkout (e.g. the base commit): alternate the arms in one
session to compare. Run by hand; CI never runs benchmarks.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accounts", type=int, default=200_000)
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.root))
    from detectors import build_detectors
    import msgspec

    from monitor.codecs.native import NativeCodec
    from monitor.events import Mark
    from monitor.pipeline import Pipeline
    from monitor.state import MarketState

    t0 = 1_732_400_000_000
    rng = random.Random(1)
    syms = [f"S{i:03d}-PERP" for i in range(args.symbols)]
    p = Pipeline(MarketState(), build_detectors({}), tick_ms=250)
    p.process([Mark(symbol=s, ts=t0, mark=100.0, index=100.0, funding_rate=0.0001) for s in syms])
    gc.collect()
    before = rss()
    n, ts = args.accounts, t0
    codec = NativeCodec()
    for start in range(0, n, 1_000):
        frame = []
        ts += 10
        for i in range(start, min(start + 1_000, n)):
            a = f"acct-{i}"
            frame.append({"type": "account", "account": a, "ts": ts, "equity": rng.uniform(1e3, 1e5),
                          "maintenance_margin": rng.uniform(1, 50)})
            for k in range(1 + i % 2):
                frame.append({"type": "position", "account": a, "symbol": syms[(i + 7 * k) % len(syms)], "ts": ts,
                              "size": rng.choice((-1, 1)) * rng.uniform(0.1, 20), "entry_price": 100.0,
                              "leverage": rng.choice((2.0, 5.0, 10.0)),
                              "margin_mode": "cross" if i % 3 else "isolated"})
        p.process(codec.decode(msgspec.json.encode(frame)))
    p.advance_to(ts + 1_000) if hasattr(p, "advance_to") else p.process([Mark(symbol=syms[0], ts=ts + 1_000,
                                                                                mark=100.0, index=100.0)])
    gc.collect()
    after = rss()
    print(f"root={os.path.basename(os.path.abspath(args.root)):12s} accounts={n:,} "
          f"RSS +{(after - before) / 2**20:,.0f} MiB = {(after - before) / n:,.0f} bytes/account")


if __name__ == "__main__":
    main()
