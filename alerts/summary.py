"""One line a person reads first, per anomaly and per incident: what, where, how much, how sure.

Built from each kind's ``detail`` (the detectors document their keys); a key a detector
does not send is left out, never shown as ``None``; an unknown kind falls back to its
score and the detail's ``crossed`` sentence. Numbers are humanized: ``$1.03M``, ``4.2x``,
``38 bps``. Pure text: the notifiers escape it for their medium.

>>> money(102_600_000.0), money(404_200.0), money(3_440.0), times(4.24)
('$102.6M', '$404k', '$3,440', '4.2x')
>>> line({"kind": "feed_gap", "symbol": "BTC-PERP", "account": None, "score": 3.0, "severity": "warning",
...       "detail": {"reason": "sequence gap: book unreliable until the next snapshot", "missing": 3}})
'feed gap on BTC-PERP: sequence gap: book unreliable until the next snapshot (3 missing)'
"""

from __future__ import annotations

from typing import Any

from monitor.events import SEVERITY_RANK
from monitor.fmt import money, times

KIND_ORDER = ("cascade_risk", "thin_book_cluster", "leverage_jump", "cancel_burst", "mark_divergence",
              "funding_crowding", "feed_gap")


def _top(detail: dict, n: int = 3) -> str:
    rows = detail.get("top_accounts") or detail.get("accounts") or []
    named = []
    for r in rows[:n]:
        if isinstance(r, dict) and r.get("account"):
            amount = r.get("notional") or r.get("cancelled_notional")
            share = r.get("share")
            named.append(f"{r['account']}" + (f" {money(amount)}" if amount else "")
                         + (f" ({share:.0%})" if isinstance(share, (int, float)) else ""))
    total = (detail.get("accounts_total") or detail.get("accounts_count") or detail.get("accounts_cancelling")
             or detail.get("accounts_raising"))
    if named and isinstance(total, int) and total > len(named):
        named.append(f"+{total - len(named)} more")
    return ", ".join(named)


def line(a: dict[str, Any]) -> str:
    """One anomaly (a CONTRACT ``anomalies[]`` item) as one line."""
    kind, d = a["kind"], a.get("detail") or {}
    where = a.get("symbol") or "the market"
    f = d.get("features") if isinstance(d.get("features"), dict) else {}
    get = lambda *keys: next((src[k] for k in keys for src in (d, f) if src.get(k) is not None), None)  # noqa: E731
    parts: list[str] = []
    if kind == "cancel_burst":
        pulled, window = get("cancelled_notional", "near_cancelled_notional"), get("window_ms")
        if pulled is not None:
            parts.append(f"{money(pulled)} pulled" + (f" in {window / 1000:g} s" if window else ""))
        level = d.get("pulled_near_touch")
        if isinstance(level, dict) and level.get("lump") is not None:
            parts.append(f"{money(level['lump'])} off one {'bid' if level.get('side') == 'bid' else 'ask'} level near "
                         f"the touch ({times(level.get('ratio_to_depth'))} the depth there)")
        ratio = get("cancel_to_trade", "cancel_trade_ratio")
        if ratio is not None:
            parts.append(f"cancel/trade {times(ratio)}")
        top = _top(d)
        if top or a.get("account"):
            parts.append(top or str(a["account"]))
        head = "cancel burst"
    elif kind == "thin_book_cluster":
        side = d.get("side")
        forced = get("forced_notional_mark_to_band", "cluster_notional")
        band = d.get("band") or {}
        depth = get("absorbing_depth")
        if forced is not None:
            span = ""
            if band.get("near_distance_bps") is not None and band.get("distance_bps") is not None:
                sgn = "-" if side == "long" else "+"
                span = f" between {sgn}{band['near_distance_bps'] / 100:.2g}% and {sgn}{band['distance_bps'] / 100:.2g}%"
            parts.append(f"{money(forced)} of {side + 's' if side else 'positions'} liquidate{span}")
        if depth is not None:
            parts.append(f"{'bids' if side == 'long' else 'asks'} there hold {money(depth)}")
        if d.get("rule") == "contagion" and d.get("source_symbol"):
            parts.append(f"dragged from {d['source_symbol']}")
        head = "thin book"
    elif kind == "leverage_jump":
        if d.get("scope") in ("cohort", "symbol", "accounts"):
            n = get("accounts_raising", "accounts_total", "accounts")
            parts.append(f"{n if not isinstance(n, list) else len(n)} accounts levering up"
                         + (f" within {d['window_ms'] / 1000:g} s" if d.get("window_ms") else ""))
            top = _top(d)
            if top:
                parts.append(top)
        else:
            reasons = d.get("reasons") or []
            if "liquidated" in reasons:
                parts.append("account liquidated: no equity left")
            if "leverage" in reasons and d.get("usual_leverage") is not None:
                parts.append(f"leverage {d['usual_leverage']:.3g}x -> {d.get('leverage')}x")
            if "effective_leverage" in reasons and d.get("effective_leverage") is not None:
                parts.append(f"notional/equity {d.get('usual_effective_leverage') or 0:.3g}x -> "
                             f"{d['effective_leverage']:.3g}x")
            if "notional" in reasons and d.get("notional") is not None:
                parts.append(f"notional {money(d.get('notional_before'))} -> {money(d['notional'])}")
            if "margin_ratio" in reasons and d.get("margin_ratio") is not None:
                parts.append(f"margin ratio {d.get('margin_ratio_before', 0):.0%} -> {d['margin_ratio']:.0%}")
            if a.get("account"):
                parts.append(str(a["account"]))
        head = "leverage"
    elif kind == "cascade_risk":
        if d.get("path_text"):
            parts.append(str(d["path_text"]))
        syms = d.get("symbols") or []
        parts.append(d.get("rule", "cascade risk") + (f" ({', '.join(syms)})" if syms else ""))
        head = "CASCADE RISK"
    elif kind == "feed_gap":
        if d.get("reason"):
            parts.append(str(d["reason"]) + (f" ({d['missing']} missing)" if d.get("missing") else ""))
        head = "feed gap"
    elif kind == "mark_divergence":
        bps = get("basis_bps", "last_vs_mark_bps")
        if bps is not None:
            parts.append(f"{bps:+.0f} bps")
        if d.get("crossed"):
            parts.append(str(d["crossed"]))
        head = "mark divergence"
    elif kind == "funding_crowding":
        rate = get("funding_rate")
        if rate is not None:
            parts.append(f"funding {rate * 100:+.3f}%" + (f", {d['who_pays']}" if d.get("who_pays") else ""))
        head = "funding crowding"
    else:
        head = kind.replace("_", " ")
    if not parts:
        parts.append(str(d.get("crossed") or f"score {a.get('score', 0):.3g}"))
    return f"{head} on {where}: " + ", ".join(parts)


def ranked(anomalies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Most severe first, then by kind (a cascade first), then highest score, newest first."""
    order = {k: i for i, k in enumerate(KIND_ORDER)}
    return sorted(anomalies, key=lambda a: (-SEVERITY_RANK.get(a["severity"], 0), order.get(a["kind"], 99),
                                            -float(a.get("score") or 0), -a["ts"]))


def headline(anomalies: list[dict[str, Any]]) -> str:
    """The incident's first line: its most important anomaly's."""
    return line(ranked(anomalies)[0]) if anomalies else ""
