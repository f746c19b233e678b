"""Checkpoint cost at scale: how long the event loop stops, old way against new.

    .venv/bin/python benchmarks/checkpoint.py [--accounts 1000000] [--symbols 50] [--rounds 3]

Builds a pipeline holding N accounts (one cross position each, all detectors), then
alternates the two arms in one run (the machine is noisy):

- in-loop: ``pickle.dump`` of the checkpoint document in this process — what the daemon's
  periodic job did before (the event loop waited for it);
- fork: ``Checkpointer.start`` — the loop waits only for the fork; the child writes.

Prints, per arm, the time the caller was blocked, the child's total write time, the file
size, the parent's RSS and RSS per account. Run by hand; CI never runs benchmarks.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from monitor.config import parse  # noqa: E402
from monitor.daemon import build_pipeline  # noqa: E402
from monitor.events import Account, Mark, Position  # noqa: E402
from monitor.ops.checkpoint import CHECKPOINT, Checkpointer, _document  # noqa: E402

T0 = 1_732_400_000_000


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--symbols", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="pw-ckpt-")
    cfg = parse(f'[store]\npath = "{tmp}/pw.db"\n[daemon]\nmax_accounts = {a.accounts + 10}\n')
    base = rss_mb()
    p = build_pipeline(cfg)
    rng = random.Random(1)
    symbols = [f"S{i:03d}-PERP" for i in range(a.symbols)]
    p.process([Mark(symbol=s, ts=T0, mark=100.0, index=100.0) for s in symbols])
    batch = []
    for i in range(a.accounts):
        s = symbols[i % len(symbols)]
        batch.append(Position(account=f"acct-{i}", symbol=s, ts=T0 + i // 1000, size=rng.uniform(-5, 5) or 1.0,
                              entry_price=100.0, leverage=rng.choice((2.0, 5.0, 10.0, 20.0))))
        if i % 5 == 0:
            batch.append(Account(account=f"acct-{i}", ts=T0 + i // 1000, equity=rng.uniform(100, 10_000)))
        if len(batch) >= 10_000:
            p.process(batch)
            batch = []
    p.process(batch)
    held = rss_mb() - base
    print(f"{a.accounts:,} accounts: RSS +{held:,.0f} MB ({held * 2**20 / a.accounts:,.0f} B/account)")
    c = Checkpointer(cfg)
    for r in range(a.rounds):
        t = time.perf_counter()
        with open(os.path.join(tmp, "inloop.pickle"), "wb") as f:
            pickle.dump(_document(cfg, p, {}), f, protocol=pickle.HIGHEST_PROTOCOL)
        inloop = time.perf_counter() - t
        size = os.path.getsize(os.path.join(tmp, "inloop.pickle")) / 2**20
        t = time.perf_counter()
        c.start(p, {})
        blocked = time.perf_counter() - t
        while not c.poll():
            time.sleep(0.005)
        child = time.perf_counter() - t
        print(f"round {r + 1}: in-loop pickle blocks {inloop * 1000:,.0f} ms ({size:,.0f} MB) | "
              f"fork blocks {blocked * 1000:,.1f} ms, child writes signed file in {child:,.1f} s "
              f"({os.path.getsize(os.path.join(tmp, CHECKPOINT)) / 2**20:,.0f} MB)")
    assert c.failed == 0, c.last_error


if __name__ == "__main__":
    main()
