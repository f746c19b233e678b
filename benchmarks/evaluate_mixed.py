"""Evaluate the detectors on the `mixed` scenario: recall, false alerts, cascade lead.

    .venv/bin/python benchmarks/evaluate_mixed.py [--hours 4] [--symbols 8] [--accounts 5000] [--seed 7]
                                                  [--misses] [--json]

Generates the labelled stream in memory (no recording on disk), replays it through the
pure pipeline with every detector on its defaults, and prints the evaluation table plus
replay throughput (``--misses``: also the labels not detected and every false alert;
``--json``: the whole report as JSON instead). Targets (issue 4): recall >= 0.95 per kind, <= 0.5 false alerts per
unlabelled hour, median cascade lead >= 120 s. Run by hand; CI never runs benchmarks.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import msgspec

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detectors import build_detectors  # noqa: E402
from monitor.app.cli import print_evaluation, print_json  # noqa: E402
from monitor.codecs.native import NativeCodec  # noqa: E402
from monitor.simulate.evaluate import evaluate  # noqa: E402
from monitor.pipeline import Pipeline  # noqa: E402
from monitor.simulate.scenarios import build, play  # noqa: E402
from monitor.state import MarketState  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=4.0)
    ap.add_argument("--symbols", type=int, default=8)
    ap.add_argument("--accounts", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--misses", action="store_true", help="print the missed labels and every false alert")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args()
    seconds = args.hours * 3600
    market, labels = build("mixed", seed=args.seed, seconds=seconds, symbols=args.symbols, accounts=args.accounts)
    t0 = time.perf_counter()
    frames = [msgspec.json.encode(e) for e in play(market, seconds)]
    gen = time.perf_counter() - t0
    pipeline = Pipeline(MarketState(), build_detectors({}), tick_ms=250)
    t0 = time.perf_counter()
    found = pipeline.run_frames(frames, NativeCodec())
    elapsed = time.perf_counter() - t0
    report = evaluate([msgspec.structs.asdict(a) for a in found], labels, pipeline.clock.first, pipeline.clock.now)
    events = sum(pipeline.counts.values())
    report.update(events=events, replay_events_per_s=round(events / elapsed),
                  simulated_hours=round((pipeline.clock.now - pipeline.clock.first) / 3.6e6, 3))
    if args.json:
        print_json(report)
        return
    print(f"mixed: {args.hours:g} h, {args.symbols} symbols, {args.accounts} accounts, seed {args.seed}; "
          f"{len(labels)} labels; generated in {gen:.1f} s, replayed in {elapsed:.1f} s")
    print_evaluation(report)
    if report["false_alert_sample"]:
        print("false alert sample:", report["false_alert_sample"][:5])
    if args.misses:
        first = pipeline.clock.first
        for m in report["missed"]:
            print(f"missed {m['kind']} {m['symbol']} {m['account'] or ''} at +{(m['start_ts'] - first) / 1000:.0f} s")
        false_ids = set(report["false_alert_ids"])
        for a in found:
            if a.id in false_ids:
                print(f"false {a.kind} {a.symbol} {a.account or ''} at +{(a.ts - first) / 1000:.0f} s "
                      f"{a.severity} score {a.score:.3g}: {a.detail.get('rule') or a.detail.get('reasons')}")


if __name__ == "__main__":
    main()
