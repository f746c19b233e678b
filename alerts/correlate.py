"""Incidents: anomalies connected in the exposure graph within a window of event time.

An anomaly joins an open incident (last seen within ``window_ms``) when they share a
symbol or an account; when an account involved in it holds cross-margin positions in one
of the incident's symbols (that account's collateral is at stake in both); or when its
symbol is linked to one of the incident's symbols in the market's exposure graph
(``monitor/state/exposure.py``: correlated returns, shared cross collateral weighted by
notional, forced flow of liquidations from one to the other). An anomaly that connects
two incidents merges them. The timeline records the reason each anomaly joined. Pure
and synchronous.

Severity rises with the evidence: an incident's severity is the worst of its anomalies,
and a thin-book cluster together with a cancel burst or a leverage jump in one incident
is a critical ``cascade_risk`` (synthesized once, with the evidence in its detail).
Incidents resolve after ``resolve_after_ms`` of event time without a new anomaly.
"""

from __future__ import annotations

import hashlib
from typing import Any

from monitor.events import Anomaly, max_severity
from monitor.state import MarketState

MAX_ANOMALIES = 200  # kept per incident (the timeline keeps counting)
MAX_OPEN = 10_000  # open incidents; beyond it the oldest is resolved early
CASCADE_PARTS = {"cancel_burst", "leverage_jump"}


class Incident:
    def __init__(self, first: Anomaly) -> None:
        self.id = "inc-" + hashlib.blake2b(first.id.encode(), digest_size=6).hexdigest()
        self.opened_ts = first.ts
        self.last_ts = first.ts
        self.severity = first.severity
        self.symbols: set[str] = set()
        self.accounts: set[str] = set()
        self.anomalies: list[Anomaly] = []
        self.timeline: list[dict[str, Any]] = []
        self.kinds: set[str] = set()
        self.version = 0
        self.status = "firing"
        self.cascade = False

    def add(self, a: Anomaly, reason: str) -> None:
        self.last_ts = max(self.last_ts, a.ts)
        self.severity = max_severity(self.severity, a.severity)
        if a.symbol:
            self.symbols.add(a.symbol)
        if a.account:
            self.accounts.add(a.account)
        self.kinds.add(a.kind)
        self.anomalies.append(a)
        del self.anomalies[:-MAX_ANOMALIES]
        self.timeline.append({"ts": a.ts, "anomaly_id": a.id, "kind": a.kind, "severity": a.severity,
                              "symbol": a.symbol, "account": a.account, "reason": reason})
        self.version += 1

    def title(self) -> str:
        kinds = ", ".join(sorted(self.kinds))
        where = ", ".join(sorted(self.symbols)) or ", ".join(sorted(self.accounts)) or "market"
        return f"{self.severity.upper()}: {kinds} on {where}"


class Correlator:
    def __init__(self, window_ms: int = 600_000, resolve_after_ms: int = 900_000) -> None:
        self.window_ms = window_ms
        self.resolve_after_ms = resolve_after_ms
        self.open: dict[str, Incident] = {}

    def add(self, a: Anomaly, state: MarketState | None) -> tuple[Incident, list[Anomaly]]:
        """Place an anomaly; returns its incident and any anomaly synthesized by the rules."""
        self._resolve(a.ts)
        symbols, accounts = self._reach(a, state)
        recent = [inc for inc in self.open.values() if a.ts - inc.last_ts <= self.window_ms]
        links: dict[str, str] = {}
        if state is not None and a.symbol and recent:
            links = state.exposure.neighbours(a.symbol, a.ts, among=set().union(*(i.symbols for i in recent)))
        joined = [inc for inc in recent
                  if inc.symbols & symbols or inc.accounts & accounts or inc.symbols & links.keys()]
        if not joined:
            inc = Incident(a)
            self.open[inc.id] = inc
            if len(self.open) > MAX_OPEN:
                oldest = min(self.open.values(), key=lambda i: i.last_ts)
                self._close(oldest)
            inc.add(a, "opened")
        else:
            inc = min(joined, key=lambda i: (i.opened_ts, i.id))
            for other in joined:
                if other is not inc:  # the anomaly bridges two incidents: merge them
                    for b in other.anomalies:
                        inc.add(b, f"merged from {other.id}")
                    del self.open[other.id]
            inc.add(a, _why(inc, symbols, accounts, links))
        return inc, self._rules(inc, a)

    def _reach(self, a: Anomaly, state: MarketState | None) -> tuple[set[str], set[str]]:
        """Symbols and accounts this anomaly touches, collateral links included."""
        symbols = {a.symbol} if a.symbol else set()
        accounts = {a.account} if a.account else set()
        for entry in (a.detail.get("top_accounts") or [])[:5]:
            if isinstance(entry, dict) and entry.get("account"):
                accounts.add(str(entry["account"]))
        if state is not None:
            for acct in list(accounts)[:10]:
                st = state.accounts.get(acct)
                if st is not None:
                    symbols.update(st.cross_symbols())
        return symbols, accounts

    def _rules(self, inc: Incident, a: Anomaly) -> list[Anomaly]:
        if inc.cascade or "thin_book_cluster" not in inc.kinds or not (inc.kinds & CASCADE_PARTS):
            return []
        inc.cascade = True
        parts = [b for b in inc.anomalies if b.kind in CASCADE_PARTS | {"thin_book_cluster"}]
        risk = Anomaly.make(
            "cascade_risk", a.ts, float(len(parts)), "critical", symbol=a.symbol,
            detail={"rule": "thin_book_cluster + (cancel_burst or leverage_jump) on connected symbols",
                    "incident_id": inc.id, "symbols": sorted(inc.symbols),
                    "evidence": [{"id": b.id, "kind": b.kind, "symbol": b.symbol, "account": b.account,
                                  "ts": b.ts, "severity": b.severity} for b in parts[-10:]]})
        inc.add(risk, "rule: cascade risk")
        return [risk]

    def _resolve(self, now: int) -> None:
        for inc in [i for i in self.open.values() if now - i.last_ts > self.resolve_after_ms]:
            self._close(inc)

    def _close(self, inc: Incident) -> None:
        inc.status = "resolved"
        self.open.pop(inc.id, None)


def _why(inc: Incident, symbols: set[str], accounts: set[str], links: dict[str, str]) -> str:
    shared = sorted((inc.symbols & symbols) | (inc.accounts & accounts))
    if shared:
        return "same " + ", ".join(shared[:5])
    linked = sorted(inc.symbols & links.keys())
    return "; ".join(f"{s}: {links[s]}" for s in linked[:3]) or "connected"

