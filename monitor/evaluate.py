"""Replay evaluation: anomalies against ground-truth labels, computed with polars.

Per label kind: how many labels, how many detected, recall. A label is detected by an
anomaly of a matching kind on its symbol (and its account, when the label names one)
between its start and ``grace_ms`` (60 s) after its end. A cascade is detected by any
anomaly but ``feed_gap`` on either of its symbols in the 10 minutes before its first
forced liquidation; its lead time is that liquidation minus the earliest such anomaly.
False alerts: anomalies (``feed_gap`` aside: the simulator really drops messages) that
fall in no label's window, per hour of event time outside every window. Alerts during
``benign_surge`` labels are counted apart: there should be none. ``labels`` gives each
label's own verdict (detected, the first matching anomaly's time, a cascade's lead, a
surge's alerts), ``missed`` the labels not detected and ``false_alert_ids`` the false
alerts (for diagnosis; they change no count).

>>> from monitor.simulate.scenarios import Label
>>> a = [{"kind": "cancel_burst", "symbol": "X", "account": None, "ts": 1_500, "id": "1"}]
>>> r = evaluate(a, [Label(kind="cancel_burst", symbol="X", start_ts=1_000, end_ts=2_000)], 0, 3_600_000)
>>> r["per_kind"][0]["recall"], r["false_alerts"]
(1.0, 0)
"""

from __future__ import annotations

from typing import Any, Iterable

import polars as pl

from monitor.simulate.scenarios import Label

MATCH = {  # label kind -> anomaly kinds that count as detecting it
    "cancel_burst": {"cancel_burst"},
    "leverage_jump": {"leverage_jump"},
    "thin_book_cluster": {"thin_book_cluster", "cascade_risk"},
}
LEAD_WINDOW_MS = 10 * 60 * 1000
GRACE_MS = 60_000  # detectors look back up to a minute: a firing that late still belongs to the label
IGNORED = {"feed_gap", "feed_stale"}


def evaluate(anomalies: Iterable[dict[str, Any]], labels: list[Label], start_ts: int, end_ts: int,
             grace_ms: int = GRACE_MS) -> dict[str, Any]:
    an = pl.DataFrame(list(anomalies), schema={"id": pl.Utf8, "kind": pl.Utf8, "symbol": pl.Utf8,
                                               "account": pl.Utf8, "ts": pl.Int64}, strict=False)
    an = an.filter(~pl.col("kind").is_in(list(IGNORED)))
    per_kind: dict[str, list[int]] = {}
    missed: list[dict[str, Any]] = []
    verdicts: list[dict[str, Any]] = []
    leads: list[dict[str, Any]] = []
    explained = pl.Series("explained", [False] * an.height, dtype=pl.Boolean)
    for label in labels:
        lo, hi = label.start_ts, label.end_ts + grace_ms
        if label.kind == "cascade":
            fl = label.first_liquidation_ts
            lo = (fl if fl is not None else label.end_ts) - LEAD_WINDOW_MS
            hi = (fl if fl is not None else label.end_ts) + grace_ms
        window = (pl.col("ts") >= lo) & (pl.col("ts") <= hi)
        # an anomaly without a symbol is not explained by a label that has one (null -> False)
        on_symbol = window & (pl.col("symbol") == label.symbol).fill_null(False) if label.symbol else window
        explained = explained | an.select(on_symbol.alias("m"))["m"]
        if label.kind == "benign_surge":
            alerts = an.filter((pl.col("ts") >= label.start_ts) & (pl.col("ts") <= hi)).height
            verdicts.append(_label_row(label) | {"detected": None, "first_ts": None, "alerts": alerts})
            continue
        if label.kind == "cascade":
            if label.first_liquidation_ts is None:
                continue
            before = an.filter(on_symbol & (pl.col("ts") <= label.first_liquidation_ts))
            lead = (label.first_liquidation_ts - before["ts"].min()) / 1000 if before.height else None
            verdicts.append(_label_row(label) | {"detected": lead is not None, "lead_s": lead,
                                                 "first_ts": before["ts"].min() if before.height else None})
            leads.append({"symbol": label.symbol, "first_liquidation_ts": label.first_liquidation_ts,
                          "lead_s": lead})
            per_kind.setdefault("cascade", [0, 0])
            per_kind["cascade"][0] += 1
            per_kind["cascade"][1] += lead is not None
            if lead is None:
                missed.append(_label_row(label))
            continue
        hits = an.filter(on_symbol & pl.col("kind").is_in(list(MATCH.get(label.kind, {label.kind}))))
        if label.account:
            hits = hits.filter(pl.col("account") == label.account)
        per_kind.setdefault(label.kind, [0, 0])
        per_kind[label.kind][0] += 1
        per_kind[label.kind][1] += hits.height > 0
        verdicts.append(_label_row(label) | {"detected": hits.height > 0,
                                             "first_ts": hits["ts"].min() if hits.height else None})
        if not hits.height:
            missed.append(_label_row(label))
    benign_alerts = sum(v["alerts"] for v in verdicts if v["kind"] == "benign_surge")
    false = an.filter(~explained)
    covered = _covered_ms(labels, grace_ms, start_ts, end_ts)
    free_h = max(end_ts - start_ts - covered, 0) / 3_600_000
    lead_values = [x["lead_s"] for x in leads if x["lead_s"] is not None]
    return {
        "per_kind": [{"kind": k, "labels": n, "detected": d, "recall": round(d / n, 4) if n else None}
                     for k, (n, d) in sorted(per_kind.items())],
        "false_alerts": false.height,
        "unlabelled_hours": round(free_h, 4),
        "false_alerts_per_hour": round(false.height / free_h, 4) if free_h > 0 else None,
        "benign_surge_alerts": benign_alerts,
        "cascades": leads,
        "median_cascade_lead_s": float(pl.Series(lead_values).median()) if lead_values else None,
        "false_alert_sample": false.sort("ts").head(10).to_dicts(),
        "false_alert_ids": false["id"].to_list(),
        "missed": missed,
        "labels": verdicts,
    }


def _label_row(label: Label) -> dict[str, Any]:
    return {"kind": label.kind, "symbol": label.symbol, "account": label.account, "start_ts": label.start_ts,
            "end_ts": label.end_ts, "first_liquidation_ts": label.first_liquidation_ts}


def _covered_ms(labels: list[Label], grace_ms: int, start_ts: int, end_ts: int) -> int:
    spans = sorted((max(lb.start_ts, start_ts), min(lb.end_ts + grace_ms, end_ts)) for lb in labels)
    total, cur_lo, cur_hi = 0, None, None
    for lo, hi in spans:
        if cur_hi is None or lo > cur_hi:
            if cur_hi is not None:
                total += cur_hi - cur_lo
            cur_lo, cur_hi = lo, hi
        else:
            cur_hi = max(cur_hi, hi)
    if cur_hi is not None:
        total += cur_hi - cur_lo
    return max(total, 0)
