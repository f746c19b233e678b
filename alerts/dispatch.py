"""Dispatch: Alertmanager's stages before the outbox — mute -> match -> timers -> payload.

The lifecycle is Alertmanager's and PagerDuty's: ``firing`` (the first notification, then
batched updates every ``group_interval`` — an escalation, i.e. a higher severity or a new
kind such as cascade_risk, at once — and repeats every ``repeat_interval``), then
``resolved`` when the incident ends (resolved on event time, merged into another, or
abandoned). A receiver with ``send_resolved = false`` gets no resolution unless its last
notification is behind the incident's final state (an update would otherwise be lost); an
incident that ended before anything was sent is sent once, as resolved, whatever the
receiver says: nothing a stored anomaly says is lost on the way out.

For each open incident: is it muted (a silence or an inhibition, ``alerts/mute.py``)? which
routes match it, in order, stopping at the first unless it says ``continue``
(``alerts/route.py``)? do that route's timers say to send now (``group_wait``,
``group_interval``, ``repeat_interval``)? If so, the incident's CONTRACT body goes to the
route's receiver. ``Dispatcher.plan`` answers all of that as data and touches nothing:
the engine writes the batch to the outbox and only then ``commit``s the timers, so a
notification that never reached the outbox is decided again at the next pass.

Pure: no I/O; wall time is passed in (timers are about people, not the market). Bounds:
route timers and mute reasons are kept only for incidents still open (dropped at the
next plan after an incident closes).
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from typing import Callable

import msgspec

from alerts.correlate import Incident
from alerts.mute import Muter
from alerts.route import RouteState, decide, matches
from alerts.summary import line, ranked
from monitor.config import RouteConfig
from monitor.events import SEVERITY_RANK

_encode = msgspec.json.Encoder().encode
MAX_PAYLOAD = 64 * 1024  # bytes: past it, older anomalies lose their detail, then the oldest go (counted)
TOP_ANOMALIES = 10  # anomalies that keep their detail whatever the size (most severe, highest score)
SUMMARY_LINES = 8


def iso(ms: int | None) -> str | None:
    """Event-time milliseconds as ISO 8601 UTC.

    >>> iso(1_732_400_000_123)
    '2024-11-23T22:13:20.123Z'
    """
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def summaries(anomalies: list[dict]) -> tuple[str, list[str]]:
    """The headline and the summary lines of a payload's anomalies."""
    seen, lines = set(), []
    for a in ranked(anomalies):
        key = (a["kind"], a.get("symbol"), a.get("account") if a.get("kind") == "leverage_jump" else None)
        if key not in seen:
            seen.add(key)
            lines.append(line(a))
            if len(lines) == SUMMARY_LINES:
                break
    return (lines[0] if lines else ""), lines


def payload(inc: Incident, *, status: str | None = None, notification: str | None = None, sequence: int | None = None,
            runbook_url: str | None = None, max_bytes: int = MAX_PAYLOAD) -> bytes:
    """The CONTRACT section 3 body for an incident's current state, extended (every v1 field
    kept with its meaning): ``status`` firing or resolved (``end_reason``: resolved, merged,
    abandoned); ``notification`` first / update / escalation / repeat / resolved and its
    ``sequence`` per receiver; start, update and end times in ms and ISO 8601 (event time);
    ``counts_by_kind`` and ``anomalies_total`` over the incident's life; ``runbook_url``;
    ``headline`` (the line a person reads first) and ``summary`` (one line per (kind, symbol),
    most important first, at most ``SUMMARY_LINES``: ``alerts/summary.py``).
    ``anomalies`` are the anomalies so far (the incident keeps its latest 200): a body over
    ``max_bytes`` first drops the detail of all but the ``TOP_ANOMALIES`` most severe, then
    the oldest anomalies, saying how many in ``anomalies_omitted`` / ``details_omitted``."""
    status = status or ("firing" if inc.status == "firing" else "resolved")
    counts = Counter(e["kind"] for e in inc.timeline if e.get("anomaly_id"))
    total = sum(counts.values()) + inc.timeline_elided
    body = {
        "version": "1",
        "incident_id": inc.id,
        "status": status,
        "severity": inc.severity,
        "title": inc.title(),
        "symbols": sorted(inc.symbols),
        "accounts": sorted(inc.accounts),
        "anomalies": [msgspec.structs.asdict(a) for a in inc.anomalies],
        "notification": notification,
        "sequence": sequence,
        "started_ts": inc.opened_ts, "started_at": iso(inc.opened_ts),
        "updated_ts": inc.last_ts, "updated_at": iso(inc.last_ts),
        "ended_ts": inc.last_ts if status == "resolved" else None,
        "ended_at": iso(inc.last_ts) if status == "resolved" else None,
        "end_reason": inc.status if status == "resolved" else None,
        "counts_by_kind": dict(sorted(counts.items())) if not inc.timeline_elided else None,
        "anomalies_total": total,
        "anomalies_omitted": 0,
        "details_omitted": 0,
        "runbook_url": runbook_url,
    }
    body["headline"], body["summary"] = summaries(body["anomalies"])
    out = _encode(body)
    if len(out) <= max_bytes:
        return out
    anomalies = body["anomalies"]
    keep = {id(a) for a in sorted(anomalies, key=lambda a: (-SEVERITY_RANK.get(a["severity"], 0), -a["score"]))
            [:TOP_ANOMALIES]}
    for a in anomalies:
        if id(a) not in keep and a["detail"]:
            a["detail"] = {}
            body["details_omitted"] += 1
    out = _encode(body)
    while len(out) > max_bytes and len(anomalies) > 1:
        drop = max(1, len(anomalies) // 4)
        del anomalies[:drop]
        body["anomalies_omitted"] += drop
        out = _encode(body)
    return out


class Plan(msgspec.Struct):
    """What one dispatch pass decided."""

    batch: list[tuple[str, str, bytes]] = []  # (receiver, incident id, body) to enqueue
    advance: list[tuple[RouteState, Incident]] = []  # timers to move once the batch is in the outbox
    newly_muted: list[tuple[str, str]] = []  # (incident id, reason): muted for a new reason


class Dispatcher:
    def __init__(self, routes: list[RouteConfig], muter: Muter | None = None,
                 send_resolved: dict[str, bool] | None = None) -> None:
        self.routes = routes
        self.muter = muter or Muter()
        self.send_resolved = send_resolved or {}  # receiver -> tell it when an incident ends (default yes)
        self.route_state: dict[tuple[int, str], RouteState] = {}  # (route index, incident id) -> timers
        self.quiet: dict[str, str] = {}  # incident id -> why it is muted now
        self.muted = 0  # passes that skipped an incident for a silence or an inhibition

    def plan(self, incidents: list[Incident], now: float, ended: list[Incident] = ()) -> Plan:
        """One pass over the open ``incidents``, after the ``ended`` ones (closed since the
        last pass, seen open or not): see the module docstring for what each receiver gets."""
        plan = Plan()
        for inc in ended:
            if self.muter.reason(inc, incidents, now) is not None:
                continue
            bodies: dict = {}
            for i, route in self._matching(inc):
                st = self.route_state.get((i, inc.id))
                told = st is not None and st.last_sent is not None
                if told and st.sent_version == inc.version and not self.send_resolved.get(route.receiver, True):
                    continue
                n = (st.notifications if told else 0) + 1
                key = (route.runbook_url, n)
                if key not in bodies:
                    bodies[key] = payload(inc, status="resolved", notification="resolved", sequence=n,
                                          runbook_url=route.runbook_url)
                plan.batch.append((route.receiver, inc.id, bodies[key]))
        live = set()
        for inc in incidents:
            live.add(inc.id)
            why_quiet = self.muter.reason(inc, incidents, now)
            if why_quiet is not None:
                self.muted += 1
                if self.quiet.get(inc.id) != why_quiet:
                    self.quiet[inc.id] = why_quiet
                    plan.newly_muted.append((inc.id, why_quiet))
                continue
            self.quiet.pop(inc.id, None)
            for i, route in self._matching(inc):
                st = self.route_state.get((i, inc.id))
                if st is None:
                    st = self.route_state[(i, inc.id)] = RouteState(now)
                why = decide(route, st, inc.version, now, inc.severity, inc.kinds)
                if why is not None:
                    body = payload(inc, notification=why, sequence=st.notifications + 1,
                                   runbook_url=route.runbook_url)
                    plan.batch.append((route.receiver, inc.id, body))
                    plan.advance.append((st, inc))
        for key in [k for k in self.route_state if k[1] not in live]:  # closed incidents
            del self.route_state[key]
        for key in [k for k in self.quiet if k not in live]:
            del self.quiet[key]
        return plan

    @staticmethod
    def commit(plan: Plan, now: float) -> None:
        """The plan's batch is in the outbox: its timers move."""
        for st, inc in plan.advance:
            st.sent(now, inc.version, inc.severity, inc.kinds)

    def settle(self, incidents: list[Incident], latest: Callable[[str, str], tuple | None], now: float) -> int:
        """After a restart: count as sent what the outbox shows was already queued or sent.

        ``latest(receiver, incident id)`` is the outbox's newest row (payload, created_at,
        sent_at) or None. Returns how many timers were reconciled."""
        reconciled = 0
        for inc in incidents:
            for i, route in self._matching(inc):
                row = latest(route.receiver, inc.id)
                if row is None:
                    continue
                st = self.route_state.get((i, inc.id))
                if same_state(row[0], inc) and (st is None or st.sent_version != inc.version):
                    if st is None:
                        st = self.route_state[(i, inc.id)] = RouteState(now)
                    st.sent(min(now, row[2] or row[1]), inc.version, inc.severity, inc.kinds)
                    reconciled += 1
        return reconciled

    def _matching(self, inc: Incident):
        """(index, route) of the routes an incident goes to, in order, as far as ``continue`` allows."""
        for i, route in enumerate(self.routes):
            if matches(route, inc.severity, inc.kinds, inc.symbols):
                yield i, route
                if not route.continue_:
                    return


def same_state(body: bytes, inc: Incident) -> bool:
    """Whether a queued firing body already carries the incident's current anomalies."""
    try:
        sent = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return False
    ids = [a.get("id") for a in sent.get("anomalies") or ()]
    want = [a.id for a in inc.anomalies]
    return sent.get("status") == "firing" and ids == want[len(want) - len(ids):] \
        and len(ids) + (sent.get("anomalies_omitted") or 0) == len(want)
