"""Liquidation cascade throughput: liquidations on many symbols, round-robin within the window.

    .venv/bin/python benchmarks/liquidation_cascade.py [--symbols 500,2000] [--events 20000] [--root DIR]

A market-wide cascade: ``--events`` liquidations cycling over ``--symbols`` symbols, 2 ms of
event time apart (so every symbol is liquidated again within the 60 s forced-flow window),
through MarketState.apply (the exposure graph's forced-flow update is the cost). ``--root``
runs another checkout of the project (e.g. the base commit) to compare arms in one session;
alternate the arms by hand or with a shell loop. Prints events/s per symbol count. Run by
hand; CI never runs benchmarks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--symbols", default="500,2000")
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--budget", type=float, default=30.0, help="stop an arm after this many seconds")
    ap.add_argument("--root", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = ap.parse_args()
    sys.path.insert(0, os.path.abspath(args.root))
    from monitor.events import Liquidation
    from monitor.state import MarketState

    t0 = 1_732_400_000_000
    for n in (int(x) for x in args.symbols.split(",")):
        state = MarketState(max_symbols=max(n, 5_000))
        events = [Liquidation(symbol=f"S{i % n}", ts=t0 + 2 * i, side="sell", price=1.0, size=1.0)
                  for i in range(args.events)]
        start = time.perf_counter()
        done = 0
        for ev in events:
            state.apply(ev)
            done += 1
            if done % 1000 == 0 and time.perf_counter() - start > args.budget:
                break
        elapsed = time.perf_counter() - start
        print(f"root={os.path.basename(os.path.abspath(args.root)):12s} symbols={n:6d} "
              f"{done / elapsed:12,.0f} liquidations/s ({done} in {elapsed:.2f}s, flow pairs {len(state.exposure.flow)})")


if __name__ == "__main__":
    main()
