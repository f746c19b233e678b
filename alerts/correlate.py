"""Incidents: anomalies connected in the exposure graph within a window of event time.

An anomaly joins an open incident (last seen within ``window_ms``) when it is connected
to it, directly or through a link:

- directly: it is on one of the incident's symbols, or names one of its accounts (the
  anomaly's own account or its top contributors);
- through a link, when the incident had an anomaly on the linked symbol within
  ``link_window_ms``: an account it names holds a *cross* position in that symbol worth
  at least ``min_account_share`` of the symbol's cross notional (its collateral backs
  both, and its forced selling would land there); or the market's exposure graph
  (``monitor/state/exposure.py``) links the two symbols by correlated returns, shared
  cross collateral weighted by notional, or forced flow of liquidations.

Links need a recent anomaly on the linked symbol itself, so a busy incident does not
swallow every linked symbol for its whole life. An anomaly that connects two incidents
merges them. The timeline records why each anomaly joined. Pure and synchronous.

Severity rises with the evidence: an incident's severity is the worst of its anomalies,
and a critical ``cascade_risk`` is synthesized (once, with the evidence in its detail)
when a thin-book cluster meets either a cancel burst or a leverage jump in the same
incident (so on one symbol or on connected ones) within ``link_window_ms`` of each other,
or forced flow: liquidations already chaining from another symbol into the cluster's
symbol. Its evidence and symbols are that window's anomalies only, never an unrelated
anomaly of minutes before. Incidents resolve after ``resolve_after_ms`` of event time
without a new anomaly; one opened more than ``max_span_ms`` ago takes no new anomaly (a
new incident opens), so a busy hour is not one story.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any

from monitor.events import Anomaly, max_severity
from monitor.state import MarketState

MAX_ANOMALIES = 200  # the latest kept per incident (the timeline keeps counting)
MAX_ACCOUNTS = 1_000  # the latest accounts kept per incident (joins and payload)
TIMELINE_HEAD, TIMELINE_MAX = 50, 500  # the opening story and the latest entries; the middle is counted
MAX_OPEN = 10_000  # open incidents; beyond it the oldest is resolved early
CASCADE_PARTS = {"cancel_burst", "leverage_jump"}


class Incident:
    def __init__(self, first: Anomaly) -> None:
        self.id = "inc-" + hashlib.blake2b(first.id.encode(), digest_size=6).hexdigest()
        self.opened_ts = first.ts
        self.last_ts = first.ts
        self.severity = first.severity
        self.symbols: set[str] = set()
        self.symbol_ts: dict[str, int] = {}  # latest anomaly event time per symbol
        self.accounts: dict[str, None] = {}  # insertion-ordered set: the oldest goes first
        self.anomalies: list[Anomaly] = []
        self.timeline: list[dict[str, Any]] = []
        self.timeline_elided = 0
        self.kinds: set[str] = set()
        self.version = 0
        self.status = "firing"
        self.cascade = False

    def add(self, a: Anomaly, reason: str) -> None:
        self.last_ts = max(self.last_ts, a.ts)
        self.severity = max_severity(self.severity, a.severity)
        if a.symbol:
            self.symbols.add(a.symbol)
            self.symbol_ts[a.symbol] = max(self.symbol_ts.get(a.symbol, a.ts), a.ts)
        if a.account:
            self.accounts.pop(a.account, None)
            self.accounts[a.account] = None
            if len(self.accounts) > MAX_ACCOUNTS:
                del self.accounts[next(iter(self.accounts))]
        self.kinds.add(a.kind)
        self.anomalies.append(a)
        del self.anomalies[:-MAX_ANOMALIES]
        self.timeline.append({"ts": a.ts, "anomaly_id": a.id, "kind": a.kind, "severity": a.severity,
                              "symbol": a.symbol, "account": a.account, "reason": reason})
        if len(self.timeline) > TIMELINE_MAX:
            del self.timeline[TIMELINE_HEAD]
            self.timeline_elided += 1
        self.version += 1

    @classmethod
    def from_stored(cls, row: dict[str, Any], anomalies: list[Anomaly]) -> "Incident":
        """An incident as the store has it (``IncidentTable.get``), with its stored anomalies:
        what a restart can still say about an incident nobody holds any more."""
        inc = cls.__new__(cls)
        inc.id, inc.opened_ts, inc.last_ts = row["id"], row["opened_ts"], row["last_ts"]
        inc.severity, inc.status = row["severity"], row["status"]
        inc.symbols, inc.symbol_ts = set(row["symbols"]), {}
        inc.accounts = dict.fromkeys(row["accounts"])
        inc.timeline = [e for e in row["timeline"] if e.get("anomaly_id")]
        inc.timeline_elided = sum(int(e["reason"].split()[0]) for e in row["timeline"] if e.get("kind") == "elided")
        inc.anomalies = sorted(anomalies, key=lambda a: (a.ts, a.id))[-MAX_ANOMALIES:]
        inc.kinds = {e["kind"] for e in inc.timeline}
        inc.version = len(inc.timeline) + inc.timeline_elided
        inc.cascade = "cascade_risk" in inc.kinds
        return inc

    def timeline_view(self) -> list[dict[str, Any]]:
        """The timeline to store and show: elided entries are marked where they were."""
        if not self.timeline_elided:
            return self.timeline
        mark = {"ts": self.timeline[TIMELINE_HEAD]["ts"], "anomaly_id": None, "kind": "elided", "severity": "info",
                "symbol": None, "account": None, "reason": f"{self.timeline_elided} entries elided"}
        return self.timeline[:TIMELINE_HEAD] + [mark] + self.timeline[TIMELINE_HEAD:]

    def title(self) -> str:
        kinds = ", ".join(sorted(self.kinds))
        where = ", ".join(sorted(self.symbols)) or ", ".join(sorted(self.accounts)) or "market"
        return f"{self.severity.upper()}: {kinds} on {where}"


class Correlator:
    max_span_ms = 3_600_000  # class default: a checkpoint from before the bound resumes with it

    def __init__(self, window_ms: int = 600_000, resolve_after_ms: int = 900_000, link_window_ms: int = 120_000,
                 min_account_share: float = 0.01, max_span_ms: int = 3_600_000) -> None:
        self.window_ms = window_ms
        self.max_span_ms = max_span_ms
        self.resolve_after_ms = resolve_after_ms
        self.link_window_ms = link_window_ms
        self.min_account_share = min_account_share
        self.open: dict[str, Incident] = {}
        self.closed: deque[Incident] = deque(maxlen=MAX_OPEN)  # resolved, not yet taken by the store

    def add(self, a: Anomaly, state: MarketState | None) -> tuple[Incident, list[Anomaly]]:
        """Place an anomaly; returns its incident and any anomaly synthesized by the rules."""
        self.resolve(a.ts)
        recent = [inc for inc in self.open.values()
                  if a.ts - inc.last_ts <= self.window_ms and a.ts - inc.opened_ts <= self.max_span_ms]
        accounts = _accounts(a)
        links = self._links(a, accounts, state, recent) if recent else {}
        joined = [(inc, why) for inc in recent if (why := self._connection(inc, a, accounts, links))]
        if not joined:
            inc = Incident(a)
            self.open[inc.id] = inc
            if len(self.open) > MAX_OPEN:
                oldest = min(self.open.values(), key=lambda i: i.last_ts)
                self._close(oldest)
            inc.add(a, "opened")
        else:
            inc, why = min(joined, key=lambda j: (j[0].opened_ts, j[0].id))
            for other, _ in joined:
                if other is not inc:  # the anomaly bridges two incidents: merge them
                    for b in other.anomalies:
                        inc.add(b, f"merged from {other.id}")
                    del self.open[other.id]
                    inc.cascade = inc.cascade or other.cascade  # its cascade_risk came along
                    other.status = "merged"
                    self.closed.append(other)
            inc.add(a, why)
        return inc, self._rules(inc, a, state)

    def _connection(self, inc: Incident, a: Anomaly, accounts: set[str], links: dict[str, str]) -> str | None:
        """Why ``a`` belongs to ``inc``, or None."""
        if a.symbol and a.symbol in inc.symbols:
            return f"same {a.symbol}"
        shared = sorted(inc.accounts.keys() & accounts)
        if shared:
            return "same account " + ", ".join(shared[:3])
        for symbol, text in links.items():
            seen = inc.symbol_ts.get(symbol)
            if seen is not None and a.ts - seen <= self.link_window_ms:
                return f"{symbol}: {text}"
        return None

    def _links(self, a: Anomaly, accounts: set[str], state: MarketState | None,
               recent: list[Incident]) -> dict[str, str]:
        """Other symbols this anomaly is linked to, each with the evidence in words."""
        if state is None:
            return {}
        links: dict[str, str] = {}
        totals = state.exposure.cross_notional
        for acct in sorted(accounts)[:10]:
            st = state.accounts.get(acct)
            for symbol, p in (st.positions.items() if st is not None else ()):
                if p.isolated or symbol == a.symbol or symbol in links or not totals.get(symbol):
                    continue
                share = p.notional() / totals[symbol]
                if share >= self.min_account_share:
                    links[symbol] = f"account {acct} holds {share:.1%} of its cross notional on the same collateral"
        if a.symbol:
            among = set().union(*(i.symbols for i in recent)) - links.keys()
            links.update(state.exposure.neighbours(a.symbol, a.ts, among=among))
        return links

    def _rules(self, inc: Incident, a: Anomaly, state: MarketState | None) -> list[Anomaly]:
        """The escalation rules, once per incident: a thin-book cluster plus a cancel burst or
        a leverage jump, or plus forced flow already chaining into the cluster's symbol."""
        if inc.cascade or "thin_book_cluster" not in inc.kinds:
            return []
        clusters = [b for b in inc.anomalies if b.kind == "thin_book_cluster"]
        # evidence from this story's own window: what happened within link_window of now
        since = a.ts - self.link_window_ms
        clusters = [b for b in clusters if b.ts >= since]
        near = [b for b in inc.anomalies if b.kind in CASCADE_PARTS and b.ts >= since]
        if not clusters:
            return []
        if near:
            rule = "thin_book_cluster + (cancel_burst or leverage_jump) on connected symbols"
            parts = sorted(clusters + near, key=lambda b: (b.ts, b.id))
            flow = []
        else:
            flow = self._forced_flow_into({b.symbol for b in clusters if b.symbol}, a.ts, state)
            if not flow:
                return []
            rule = "thin_book_cluster + forced flow (liquidations chaining) into its symbol"
            parts = clusters
        inc.cascade = True
        detail: dict[str, Any] = {
            "rule": rule, "incident_id": inc.id, "symbols": sorted({b.symbol for b in parts if b.symbol}),
            "window_ms": self.link_window_ms,
            "evidence": [{"id": b.id, "kind": b.kind, "symbol": b.symbol, "account": b.account,
                          "ts": b.ts, "severity": b.severity} for b in parts[-10:]]}
        if flow:
            detail["forced_flow"] = flow
        risk = Anomaly.make("cascade_risk", a.ts, float(len(parts) + len(flow)), "critical", symbol=a.symbol,
                            detail=detail)
        inc.add(risk, "rule: cascade risk")
        return [risk]

    @staticmethod
    def _forced_flow_into(symbols: set[str], now: int, state: MarketState | None) -> list[dict[str, Any]]:
        if state is None:
            return []
        return [{"from": src, "into": s, "chains": round(n, 2)}
                for s in sorted(symbols) for src, n in state.exposure.flow_into(s, now)]

    def resolve(self, now: int) -> None:
        """Close the incidents quiet for ``resolve_after_ms`` of event time at ``now``."""
        for inc in [i for i in self.open.values() if now - i.last_ts > self.resolve_after_ms]:
            self._close(inc)

    def take_closed(self) -> list[Incident]:
        """Incidents resolved since the last call (the engine stores their final state)."""
        out = list(self.closed)
        self.closed.clear()
        return out

    def _close(self, inc: Incident) -> None:
        inc.status = "resolved"
        if self.open.pop(inc.id, None) is not None:
            self.closed.append(inc)


def _accounts(a: Anomaly) -> set[str]:
    """The anomaly's account and its top contributors."""
    accounts = {a.account} if a.account else set()
    for entry in (a.detail.get("top_accounts") or [])[:5]:
        if isinstance(entry, dict) and entry.get("account"):
            accounts.add(str(entry["account"]))
    return accounts

