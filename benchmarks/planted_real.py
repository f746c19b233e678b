"""Planted truth in real traffic: labelled pulls of known size in real Binance USD-M ETHUSDT.

    .venv/bin/python benchmarks/planted_real.py [--at 90,150,210,270,330] [--x 0.5,1,1.5,2,5,20] [--json]

The recording is ``../shared/data/real/binance_usdm_ethusdt_20240808.hftbacktest.gz`` (5.75
min; the 100 s excerpt in ``tests/data`` when the shared folder is absent). First the real
minutes alone through every detector on its defaults (anomalies by kind: the calm real
stretch should raise none). Then, for each planting moment (seconds after the first
message) and each size (x the bid depth resting within 10 bps of the best bid then), a
bid placed 3 bps under the best bid and pulled one second later (``tests.planted``: only
depth-diff level lists change, ``U``/``u``/``pu`` stay as recorded, so the book stays in
sync), replayed alone through cancel_burst on its defaults: caught or not (an anomaly
within a second of the pull naming the planted price), how fast, at what severity and z.
The last line gives the smallest size caught at every moment. Runs by hand (~2 min).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from detectors import build_detectors  # noqa: E402
from tests.planted import EXCERPT, FULL, event_ms, plant_pull, read_hftbacktest, replay  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--at", default="90,150,210,270,330", help="planting moments, seconds after the first message")
    ap.add_argument("--x", default="0.5,1,1.5,2,5,20", help="planted sizes, x the near-touch bid depth")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    path = FULL if FULL.exists() else EXCERPT
    msgs = read_hftbacktest(path)
    t0, t1 = event_ms(msgs[0]), event_ms(msgs[-1])
    moments = [float(a) for a in args.at.split(",") if float(a) * 1000 + 2_000 < t1 - t0]
    sizes = [float(x) for x in args.x.split(",")]
    started = time.perf_counter()
    calm, pipe = replay(msgs, build_detectors({}))
    report: dict = {"recording": path.name, "event_minutes": round((t1 - t0) / 60_000, 2),
                    "events": dict(pipe.counts), "calm_anomalies": dict(Counter(a.kind for a in calm)), "plants": []}
    if not args.json:
        print(f"{path.name}: {report['event_minutes']} min of event time, {sum(pipe.counts.values()):,} events; "
              f"alone, every detector on defaults: {report['calm_anomalies'] or 'no anomaly'}")
    for at in moments:
        for x in sizes:
            planted, plant = plant_pull(msgs, t0 + int(at * 1000), x)
            out, _ = replay(planted)
            hits = [a for a in out if plant.pull_ts <= a.ts <= plant.pull_ts + 1_000
                    and (a.detail["pulled_near_touch"] or {}).get("price") == plant.price]
            other = [a for a in out if a not in hits]
            row = {"at_s": at, "x_depth": x, "notional": plant.notional, "depth_near": plant.depth_near,
                   "price": plant.price, "trades_through": plant.trades_through, "caught": bool(hits),
                   "latency_ms": hits[0].ts - plant.pull_ts if hits else None,
                   "severity": hits[0].severity if hits else None,
                   "trigger": hits[0].detail["trigger"] if hits else None,
                   "z": hits[0].detail["z"] if hits else None, "other_anomalies": len(other)}
            report["plants"].append(row)
            if not args.json:
                verdict = (f"caught {row['latency_ms']} ms after the pull, {row['severity']} ({row['trigger']}; "
                           f"z cancel-to-trade {row['z']['cancel_to_trade']:.2f})" if hits else "not caught")
                print(f"  +{at:>5.0f} s  {x:>5g}x  ${plant.notional / 1e6:7.2f}M (near-touch bid depth "
                      f"${plant.depth_near / 1e6:.2f}M)  {verdict}"
                      + (f"  [{len(other)} other anomalies]" if other else ""), flush=True)
    always = [x for x in sizes if all(r["caught"] for r in report["plants"] if r["x_depth"] == x)]
    report["smallest_caught_every_time"] = min(always) if always else None
    report["caught_by_size"] = {x: f"{sum(r['caught'] for r in report['plants'] if r['x_depth'] == x)}"
                                   f"/{sum(1 for r in report['plants'] if r['x_depth'] == x)}" for x in sizes}
    report["wall_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(report))
        return
    print(f"caught by size: {report['caught_by_size']}; smallest caught at every moment: "
          f"{report['smallest_caught_every_time']}x the near-touch depth ({report['wall_s']} s wall)")


if __name__ == "__main__":
    main()
