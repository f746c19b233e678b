"""Ingest throughput: msgspec decode alone vs decode + state + detector host, one core.

    .venv/bin/python benchmarks/ingest.py [--frames 3000] [--symbols 50] [--accounts 100000] [--rate 50000]

Frames hold 100 events each, mixed like a real exchange feed (book deltas and L3 orders
dominate; trades, marks, positions and account updates follow). Prices and sizes are
sent as decimal strings half of the time, as venues do. Prints events/s for both runs
and their ratio. Run by hand; CI never runs benchmarks.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sys
import time

import msgspec

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectors import build_detectors  # noqa: E402
from monitor.codecs.native import NativeCodec  # noqa: E402
from monitor.pipeline import Pipeline, tune_gc  # noqa: E402
from monitor.state import MarketState  # noqa: E402

T0 = 1_732_400_000_000
MIX = [("book", 40), ("order", 35), ("trade", 12), ("mark", 3), ("position", 7), ("account", 3)]


def make_frames(n_frames: int, n_symbols: int, n_accounts: int, seed: int = 1, rate: int = 50_000) -> list[bytes]:
    """``rate``: events per second of event time (ticks cost per event-time second, not per event)."""
    rng = random.Random(seed)
    kinds = [k for k, w in MIX for _ in range(w)]
    symbols = [f"S{i:03d}-PERP" for i in range(n_symbols)]
    mids = {s: rng.uniform(1, 50_000) for s in symbols}
    seqs = {s: 1 for s in symbols}
    ts = T0
    num = (lambda x: x) if rng.random() < 0.5 else str
    frames = []
    # one snapshot per symbol first, 50 levels a side
    for s in symbols:
        m = mids[s]
        frames.append(msgspec.json.encode({
            "type": "book", "symbol": s, "ts": ts, "seq": 1, "snapshot": True,
            "bids": [[m * (1 - i * 1e-4), rng.uniform(0.1, 10)] for i in range(1, 51)],
            "asks": [[m * (1 + i * 1e-4), rng.uniform(0.1, 10)] for i in range(1, 51)]}))
    per_ms = max(rate / 1000.0, 1e-3)
    n = 0
    for _ in range(n_frames):
        events = []
        for _ in range(100):
            n += 1
            ts = T0 + int(n / per_ms)
            k = rng.choice(kinds)
            s = rng.choice(symbols)
            m = mids[s] = mids[s] * (1 + rng.gauss(0, 2e-5))
            num = str if rng.random() < 0.5 else float
            if k == "book":
                seqs[s] += 1
                side = "bids" if rng.random() < 0.5 else "asks"
                sign = -1 if side == "bids" else 1
                lv = [[num(round(m * (1 + sign * rng.randint(1, 50) * 1e-4), 6)),
                       num(round(rng.choice((0.0, rng.uniform(0.1, 10))), 4))] for _ in range(rng.randint(1, 3))]
                events.append({"type": "book", "symbol": s, "ts": ts, "seq": seqs[s], side: lv})
            elif k == "order":
                events.append({"type": "order", "symbol": s, "ts": ts, "order_id": rng.randint(1, 10**9),
                               "account": f"a-{rng.randrange(n_accounts)}",
                               "action": rng.choice(("new", "new", "cancel", "cancel", "fill", "amend")),
                               "side": rng.choice(("buy", "sell")), "price": num(round(m, 6)),
                               "size": num(round(rng.uniform(0.01, 5), 4))})
            elif k == "trade":
                events.append({"type": "trade", "symbol": s, "ts": ts, "price": num(round(m, 6)),
                               "size": num(round(rng.uniform(0.01, 5), 4)), "side": rng.choice(("buy", "sell"))})
            elif k == "mark":
                events.append({"type": "mark", "symbol": s, "ts": ts, "mark": num(round(m, 6)),
                               "index": num(round(m * (1 + rng.gauss(0, 1e-4)), 6)), "last": num(round(m, 6)),
                               "funding_rate": 0.0001, "open_interest": 1e6})
            elif k == "position":
                size = rng.uniform(-10, 10)
                events.append({"type": "position", "account": f"a-{rng.randrange(n_accounts)}", "symbol": s,
                               "ts": ts, "size": num(round(size, 4)), "entry_price": num(round(m, 6)),
                               "leverage": rng.choice((2, 3, 5, 10, 20)), "margin_mode": "cross"})
            else:
                events.append({"type": "account", "account": f"a-{rng.randrange(n_accounts)}", "ts": ts,
                               "equity": num(round(rng.uniform(100, 1e6), 2)), "maintenance_margin": 10})
        frames.append(msgspec.json.encode(events))
    return frames


def bench(frames: list[bytes], full: bool) -> tuple[int, float, int]:
    codec = NativeCodec()
    pipeline = Pipeline(MarketState(), build_detectors({}), tick_ms=250) if full else None
    n = anomalies = 0
    t0 = time.perf_counter()
    for f in frames:
        events = codec.decode(f)
        n += len(events)
        if pipeline is not None:
            anomalies += len(pipeline.process(events))
    elapsed = time.perf_counter() - t0
    assert not codec.stats.dropped, codec.stats.dropped
    return n, elapsed, anomalies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rate", type=int, default=50_000, help="events per second of event time")
    args = ap.parse_args()
    frames = make_frames(args.frames, args.symbols, args.accounts, rate=args.rate)
    tune_gc()  # as the daemon does
    print(f"{len(frames)} frames, {args.symbols} symbols, {args.accounts} accounts, {args.rate:,} events/s of event time; "
          f"detectors: {[d.name for d in build_detectors({})]}")
    best = {}
    for full in (False, True):
        runs = [bench(frames, full) for _ in range(args.repeat)]
        n, elapsed, anomalies = min(runs, key=lambda r: r[1])
        best[full] = n / elapsed
        label = "decode + state + detectors" if full else "decode only"
        print(f"{label:28s} {n / elapsed:12,.0f} events/s  ({n} events in {elapsed:.3f}s, anomalies={anomalies})")
    print(f"{'ratio':28s} {best[True] / best[False]:12.3f}")
    print(f"{'max RSS':28s} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:12.0f} MiB")


if __name__ == "__main__":
    main()
