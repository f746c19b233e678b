"""Strict replay evaluation: anomalies against ground-truth labels (``perpwatch evaluate``).

What counts as detecting a label (``feed_gap``, ``feed_stale`` and ``coverage`` are ignored throughout:
the simulator really drops messages):

- ``cancel_burst``, ``leverage_jump``: an anomaly of that kind on the label's symbol (and
  account, when the label names one) between its start and ``grace_ms`` (60 s) after its end.
- ``leverage_cohort`` (N accounts raising leverage on one symbol): only a *symbol-level*
  ``leverage_jump`` (no account) on its symbol in the same window. Per-account anomalies
  there are explained, not credited.
- ``thin_book_cluster``: a ``thin_book_cluster`` or ``cascade_risk`` on its symbol between
  the cluster's formation and the label's end (no grace).
- ``cascade`` (one episode, labelled once per symbol): a ``thin_book_cluster`` or
  ``cascade_risk`` on any of its symbols between the cluster's formation and *before* the
  first forced liquidation: no credit once the cascade has begun. Recall counts episodes;
  the lead is that liquidation minus the earliest such anomaly (``cascades`` also gives each
  symbol's own lead, ``symbol_lead_s``). A cascade whose price never reached a liquidation
  is left out of recall (``cascades_unforced``).

False alerts are anomalies after the warm-up (``warmup_ms`` from the first event; alerts
before it are reported apart as ``warmup_alerts``) that no stress label explains: a label
explains anomalies of any kind on its symbol from its start to ``grace_ms`` after its end
(a cascade's from its start to the later of its end and first liquidation, plus grace).
``benign_surge`` and ``calm_burst`` labels explain nothing: alerts during them are false
alerts, also counted apart. Counted per anomaly and per false episode (anomalies of one
(kind, symbol) less than ``INCIDENT_GAP_MS`` apart are one), per calm hour: event time
after the warm-up outside every stress label's window. ``episodes`` gives each labelled
stress episode's anomalies per kind (a cascade's two symbols are one episode), and
``max_anomalies_per_episode`` the worst of them.

The JSON keys of the earlier, lenient evaluation are kept with their meaning (now strict):
``per_kind``, ``false_alerts``, ``unlabelled_hours`` (= calm hours), ``false_alerts_per_hour``,
``benign_surge_alerts``, ``cascades``, ``median_cascade_lead_s``, ``false_alert_sample``,
``false_alert_ids``, ``missed``, ``labels`` (each label's verdict; the demo reads them).

>>> from monitor.simulate.scenarios import Label
>>> a = [{"kind": "cancel_burst", "symbol": "X", "account": None, "ts": 200_000, "id": "1"}]
>>> r = evaluate(a, [Label(kind="cancel_burst", symbol="X", start_ts=199_000, end_ts=210_000)], 0, 3_600_000)
>>> r["per_kind"][0]["recall"], r["false_alerts"]
(1.0, 0)
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any, Iterable

from monitor.simulate.scenarios import BENIGN, Label

MATCH = {  # label kind -> anomaly kinds that count as detecting it
    "cancel_burst": {"cancel_burst"},
    "leverage_jump": {"leverage_jump"},
    "leverage_cohort": {"leverage_jump"},  # symbol-level only (see symbol_level)
    "thin_book_cluster": {"thin_book_cluster", "cascade_risk"},
    "cascade": {"thin_book_cluster", "cascade_risk"},
}
SYMBOL_LEVEL = {"leverage_cohort"}  # kinds only an anomaly with no account can detect
GRACE_MS = 60_000  # detectors look back up to a minute: a firing that late still belongs to the label
NO_GRACE = {"thin_book_cluster", "cascade"}  # credited only within the episode
WARMUP_MS = 120_000  # the scenarios' calm warm-up (scenarios.WARMUP_S)
INCIDENT_GAP_MS = 300_000
IGNORED = {"feed_gap", "feed_stale", "coverage"}


def evaluate(anomalies: Iterable[dict[str, Any]], labels: list[Label], start_ts: int, end_ts: int,
             grace_ms: int = GRACE_MS, warmup_ms: int = WARMUP_MS) -> dict[str, Any]:
    an = sorted(({"id": a.get("id"), "kind": a["kind"], "symbol": a.get("symbol"), "account": a.get("account"),
                  "ts": int(a["ts"])} for a in anomalies if a["kind"] not in IGNORED), key=lambda a: a["ts"])
    warm_end = start_ts + warmup_ms
    warmup = [a for a in an if a["ts"] < warm_end]
    an = [a for a in an if a["ts"] >= warm_end]
    stress = [lb for lb in labels if lb.kind not in BENIGN]
    explained: set[int] = set()
    per_kind: dict[str, list[int]] = {}
    verdicts: list[dict[str, Any]] = []
    missed: list[dict[str, Any]] = []
    leads: list[dict[str, Any]] = []
    unforced = 0
    seen_cascades: set[tuple] = set()
    for label in stress:
        lo, hi = _explains(label, grace_ms)
        for i, a in enumerate(an):
            if lo <= a["ts"] <= hi and (label.symbol is None or a["symbol"] == label.symbol):
                explained.add(i)
        if label.kind == "cascade" and label.first_liquidation_ts is None:
            unforced += 1
            continue
        hits = [a for a in an if _credits(label, a, grace_ms)]
        first = hits[0]["ts"] if hits else None
        row = _label_row(label) | {"detected": bool(hits), "first_ts": first}
        counted = True
        if label.kind == "cascade":
            lead = (label.first_liquidation_ts - first) / 1000 if hits else None
            own = [a["ts"] for a in hits if a["symbol"] == label.symbol]
            row["lead_s"] = lead
            row["symbol_lead_s"] = (label.first_liquidation_ts - own[0]) / 1000 if own else None
            leads.append({"symbol": label.symbol, "first_liquidation_ts": label.first_liquidation_ts,
                          "lead_s": lead, "symbol_lead_s": row["symbol_lead_s"], "episode": label.episode})
            key = (label.episode, label.start_ts, label.first_liquidation_ts)
            counted = key not in seen_cascades
            seen_cascades.add(key)
        verdicts.append(row)
        if counted:
            n_d = per_kind.setdefault(label.kind, [0, 0])
            n_d[0] += 1
            n_d[1] += bool(hits)
            if not hits:
                missed.append(_label_row(label))
    benign_alerts: Counter[str] = Counter()
    for label in labels:
        if label.kind in BENIGN:
            hi = label.end_ts + grace_ms
            n = sum(1 for a in an if label.start_ts <= a["ts"] <= hi
                    and (label.symbol is None or a["symbol"] == label.symbol))
            benign_alerts[label.kind] += n
            if label.kind == "benign_surge":
                verdicts.append(_label_row(label) | {"detected": None, "first_ts": None, "alerts": n})
    verdicts.sort(key=lambda v: v["start_ts"])
    false = [a for i, a in enumerate(an) if i not in explained]
    incidents = _incidents(false)
    calm_h = max(end_ts - warm_end - _covered_ms(stress, grace_ms, warm_end, end_ts), 0) / 3_600_000
    episodes = _episodes(stress, an, grace_ms)
    by_episode = {(x["episode"], x["first_liquidation_ts"]): x["lead_s"] for x in leads}
    lead_values = [v for v in by_episode.values() if v is not None]
    return {
        "scoring": "strict",
        "per_kind": [{"kind": k, "labels": n, "detected": d, "recall": round(d / n, 4) if n else None}
                     for k, (n, d) in sorted(per_kind.items())],
        "false_alerts": len(false),
        "false_incidents": len(incidents),
        "unlabelled_hours": round(calm_h, 4),
        "false_alerts_per_hour": round(len(false) / calm_h, 4) if calm_h > 0 else None,
        "false_incidents_per_hour": round(len(incidents) / calm_h, 4) if calm_h > 0 else None,
        "false_by_kind": dict(Counter(a["kind"] for a in false)),
        "false_incident_list": incidents,
        "benign_surge_alerts": benign_alerts["benign_surge"],
        "calm_burst_alerts": benign_alerts["calm_burst"],
        "warmup_alerts": len(warmup),
        "warmup_by_kind": dict(Counter(a["kind"] for a in warmup)),
        "cascades": leads,
        "cascades_unforced": unforced,
        "median_cascade_lead_s": statistics.median(lead_values) if lead_values else None,
        "min_cascade_lead_s": (min(lead_values) if lead_values and len(lead_values) == len(by_episode)
                               else None),  # None: some cascade was not warned at all
        "episodes": episodes,
        "max_anomalies_per_episode": max((n for e in episodes for n in e["anomalies"].values()), default=0),
        "false_alert_sample": false[:10],
        "false_alert_ids": [a["id"] for a in false],
        "missed": missed,
        "labels": verdicts,
    }


def _explains(label: Label, grace_ms: int) -> tuple[int, int]:
    end = label.end_ts
    if label.kind == "cascade" and label.first_liquidation_ts is not None:
        end = max(end, label.first_liquidation_ts)
    return label.start_ts, end + grace_ms


def _credits(label: Label, a: dict[str, Any], grace_ms: int) -> bool:
    if a["kind"] not in MATCH.get(label.kind, {label.kind}):
        return False
    if label.kind == "cascade":
        if a["symbol"] not in (label.symbols or [label.symbol]):
            return False
    elif label.symbol is not None and a["symbol"] != label.symbol:
        return False
    if label.account and a["account"] != label.account:
        return False
    if label.kind in SYMBOL_LEVEL and a["account"] is not None:
        return False
    lo = label.formation_ts if label.formation_ts is not None else label.start_ts
    if label.kind == "cascade":
        return lo <= a["ts"] < label.first_liquidation_ts  # type: ignore[operator]
    hi = label.end_ts + (0 if label.kind in NO_GRACE else grace_ms)
    return lo <= a["ts"] <= hi


def _episodes(stress: list[Label], an: list[dict[str, Any]], grace_ms: int) -> list[dict[str, Any]]:
    """Each stress episode (labels sharing ``episode``, else one label) and its anomalies by kind."""
    groups: dict[Any, list[Label]] = defaultdict(list)
    for i, lb in enumerate(stress):
        groups[(lb.kind, lb.episode) if lb.episode is not None else ("label", i)].append(lb)
    out = []
    for lbs in groups.values():
        syms = {lb.symbol for lb in lbs}
        spans = [_explains(lb, grace_ms) for lb in lbs]
        lo, hi = min(s[0] for s in spans), max(s[1] for s in spans)
        kinds = Counter(a["kind"] for a in an if lo <= a["ts"] <= hi and (None in syms or a["symbol"] in syms))
        out.append({"kind": lbs[0].kind, "episode": lbs[0].episode, "symbols": sorted(s for s in syms if s),
                    "start_ts": lbs[0].start_ts, "anomalies": dict(kinds)})
    return sorted(out, key=lambda e: e["start_ts"])


def _incidents(false: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """False anomalies grouped per (kind, symbol): less than INCIDENT_GAP_MS apart is one."""
    open_: dict[tuple, dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for a in false:
        key = (a["kind"], a["symbol"])
        cur = open_.get(key)
        if cur is None or a["ts"] - cur["last_ts"] >= INCIDENT_GAP_MS:
            cur = open_[key] = {"kind": a["kind"], "symbol": a["symbol"], "first_ts": a["ts"], "last_ts": a["ts"],
                                "anomalies": 0}
            out.append(cur)
        cur["last_ts"] = a["ts"]
        cur["anomalies"] += 1
    return out


def _label_row(label: Label) -> dict[str, Any]:
    return {"kind": label.kind, "symbol": label.symbol, "account": label.account, "start_ts": label.start_ts,
            "end_ts": label.end_ts, "first_liquidation_ts": label.first_liquidation_ts,
            "formation_ts": label.formation_ts, "episode": label.episode, "detail": label.detail}


def _covered_ms(labels: list[Label], grace_ms: int, start_ts: int, end_ts: int) -> int:
    spans = sorted((max(lo, start_ts), min(hi, end_ts)) for lo, hi in (_explains(lb, grace_ms) for lb in labels))
    total, cur_lo, cur_hi = 0, None, None
    for lo, hi in spans:
        if hi <= lo:
            continue
        if cur_hi is None or lo > cur_hi:
            if cur_hi is not None:
                total += cur_hi - cur_lo
            cur_lo, cur_hi = lo, hi
        else:
            cur_hi = max(cur_hi, hi)
    if cur_hi is not None:
        total += cur_hi - cur_lo
    return max(total, 0)
