"""Detector cost: ingest throughput with every detector on defaults, and memory at 1M accounts.

    .venv/bin/python benchmarks/detectors.py [--frames 2000] [--symbols 50] [--accounts 100000]
                                             [--rate 50000] [--repeat 3] [--rss-accounts 1000000]

Throughput (one core): the feed of ``benchmarks/ingest.py`` (100 events a frame, book
deltas and L3 orders first, then trades, marks, positions, account updates; half the
numbers as decimal strings), ``--rate`` events per second of event time, run as

- decode only (msgspec, the native codec),
- decode + state (no detector),
- decode + state + each detector alone,
- decode + state + all detectors (``build_detectors({})``: every registered one, defaults),

reporting events/s of process CPU time (so a busy shared machine does not skew it) and
the ratio of the full pipeline to decode only (the issue's target is >= 0.40). Memory: a fresh process feeds ``--rss-accounts`` accounts, each an account
event and one or two positions (cross and isolated, 2x-50x), through state + all
detectors, and reports RSS before and after, with a state-only process for comparison.
Run by hand; CI never runs benchmarks.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
# this file is named like the package it measures: keep its own folder off the path
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != HERE]
sys.path.insert(0, ROOT)

import importlib.util  # noqa: E402

from detectors import REGISTRY, build_detectors  # noqa: E402

_spec = importlib.util.spec_from_file_location("perpwatch_bench_ingest", os.path.join(HERE, "ingest.py"))
_ingest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_ingest)
make_frames = _ingest.make_frames
from monitor.codecs.native import NativeCodec  # noqa: E402
from monitor.events import Account, Mark, Position  # noqa: E402
from monitor.pipeline import Pipeline  # noqa: E402
from monitor.state import MarketState  # noqa: E402

try:
    from monitor.pipeline import tune_gc  # noqa: E402
except ImportError:  # older trees
    def tune_gc() -> None:
        gc.freeze()

T0 = 1_732_400_000_000


def throughput(frames: list[bytes], detectors: list | None) -> tuple[int, float, int]:
    """(events, seconds, anomalies); ``detectors`` None = decode only."""
    codec = NativeCodec()
    pipeline = Pipeline(MarketState(), detectors, tick_ms=250) if detectors is not None else None
    n = anomalies = 0
    t0 = time.process_time()  # CPU time: other processes on a shared box do not inflate it
    for f in frames:
        events = codec.decode(f)
        n += len(events)
        if pipeline is not None:
            anomalies += len(pipeline.process(events))
    elapsed = time.process_time() - t0
    return n, elapsed, anomalies


def best_of(frames, make, repeat: int) -> tuple[float, int]:
    runs = [throughput(frames, make()) for _ in range(repeat)]
    n, elapsed, anomalies = min(runs, key=lambda r: r[1])
    return n / elapsed, anomalies


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def fill_accounts(n_accounts: int, n_symbols: int, with_detectors: bool) -> dict:
    """Feed n accounts with positions through state (+ all detectors); RSS before/after."""
    rng = random.Random(5)
    state = MarketState(max_accounts=max(2_000_000, n_accounts))
    p = Pipeline(state, build_detectors({}) if with_detectors else [], tick_ms=250)
    symbols = [f"S{i:03d}-PERP" for i in range(n_symbols)]
    mids = {s: rng.uniform(1, 50_000) for s in symbols}
    p.process([Mark(symbol=s, ts=T0, mark=m, index=m, funding_rate=0.0001) for s, m in mids.items()])
    gc.collect()
    before = rss_mib()
    t0 = time.perf_counter()
    batch: list = []
    positions = 0
    for i in range(n_accounts):
        ts = T0 + 1 + i // 20  # 20k accounts per second of event time: ticks run as in production
        a = f"acct-{i:07d}"
        batch.append(Account(account=a, ts=ts, equity=rng.lognormvariate(9.5, 1.0), maintenance_margin=10.0))
        for s in rng.sample(symbols, 1 + (rng.random() < 0.35)):
            m = mids[s]
            lev = rng.choice((2.0, 3.0, 5.0, 10.0, 20.0, 50.0))
            batch.append(Position(account=a, symbol=s, ts=ts, size=rng.choice((-1, 1)) * 20_000 / m * rng.uniform(0.2, 3),
                                  entry_price=m, leverage=lev, margin_mode="isolated" if rng.random() < 0.2 else "cross",
                                  liq_price=m * (1 - 0.9 / lev)))
            positions += 1
        if len(batch) >= 10_000:
            p.process(batch)
            batch = []
    p.process(batch)
    p.process([Mark(symbol=s, ts=T0 + 1 + n_accounts // 20 + 1_000, mark=m, index=m) for s, m in mids.items()])
    elapsed = time.perf_counter() - t0
    gc.collect()
    return {"accounts": len(state.accounts), "positions": positions, "rss_before_mib": round(before, 1),
            "rss_after_mib": round(rss_mib(), 1), "fill_seconds": round(elapsed, 1),
            "detectors": [d.name for d in p.detectors]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--accounts", type=int, default=100_000)
    ap.add_argument("--rate", type=int, default=50_000, help="events per second of event time")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rss-accounts", type=int, default=1_000_000)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--rss-child", choices=("state", "all"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rss_child:
        print(json.dumps(fill_accounts(args.rss_accounts, args.symbols, args.rss_child == "all")))
        return

    frames = make_frames(args.frames, args.symbols, args.accounts, rate=args.rate)
    tune_gc()  # as the daemon does
    n_events = sum(1 for _ in frames) * 100
    print(f"{len(frames)} frames (~{n_events:,} events), {args.symbols} symbols, {args.accounts:,} accounts, "
          f"{args.rate:,} events/s of event time, best of {args.repeat}")
    decode, _ = best_of(frames, lambda: None, args.repeat)
    print(f"{'decode only':34s} {decode:12,.0f} events/s")
    state_only, _ = best_of(frames, lambda: [], args.repeat)
    print(f"{'decode + state':34s} {state_only:12,.0f} events/s  ratio {state_only / decode:.3f}")
    for name, cls in REGISTRY.items():
        r, found = best_of(frames, lambda cls=cls: [cls()], args.repeat)
        us = (1 / r - 1 / state_only) * 1e6
        print(f"{'decode + state + ' + name:34s} {r:12,.0f} events/s  ({us:+.2f} us/event, anomalies={found})")
    full, found = best_of(frames, lambda: build_detectors({}), args.repeat)
    print(f"{'decode + state + all detectors':34s} {full:12,.0f} events/s  (anomalies={found})")
    print(f"{'ratio all / decode only':34s} {full / decode:12.3f}   (issue target >= 0.40)")
    print(f"{'ratio all / decode + state':34s} {full / state_only:12.3f}")

    if args.skip_rss:
        return
    for child in ("state", "all"):
        r = subprocess.run([sys.executable, __file__, "--rss-child", child, "--rss-accounts", str(args.rss_accounts),
                            "--symbols", str(args.symbols)], capture_output=True, text=True, check=True)
        res = json.loads(r.stdout)
        label = "state only" if child == "state" else "state + all detectors"
        print(f"RSS, {res['accounts']:,} accounts / {res['positions']:,} positions, {label}: "
              f"{res['rss_after_mib']:,.0f} MiB (process before filling {res['rss_before_mib']:,.0f} MiB; "
              f"filled in {res['fill_seconds']} s)")


if __name__ == "__main__":
    main()
