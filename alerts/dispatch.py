"""Dispatch: Alertmanager's stages before the outbox — mute -> match -> timers -> payload.

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

from typing import Callable

import msgspec

from alerts.correlate import Incident
from alerts.mute import Muter
from alerts.route import RouteState, decide, matches
from monitor.config import RouteConfig

_encode = msgspec.json.Encoder().encode


def payload(inc: Incident) -> bytes:
    """The CONTRACT section 3 body for an incident's current state."""
    return _encode({
        "version": "1",
        "incident_id": inc.id,
        "status": "firing",
        "severity": inc.severity,
        "title": inc.title(),
        "symbols": sorted(inc.symbols),
        "accounts": sorted(inc.accounts),
        "anomalies": [msgspec.structs.asdict(a) for a in inc.anomalies],
    })


class Plan(msgspec.Struct):
    """What one dispatch pass decided."""

    batch: list[tuple[str, str, bytes]] = []  # (receiver, incident id, body) to enqueue
    advance: list[tuple[RouteState, int]] = []  # timers to move once the batch is in the outbox
    newly_muted: list[tuple[str, str]] = []  # (incident id, reason): muted for a new reason


class Dispatcher:
    def __init__(self, routes: list[RouteConfig], muter: Muter | None = None) -> None:
        self.routes = routes
        self.muter = muter or Muter()
        self.route_state: dict[tuple[int, str], RouteState] = {}  # (route index, incident id) -> timers
        self.quiet: dict[str, str] = {}  # incident id -> why it is muted now
        self.muted = 0  # passes that skipped an incident for a silence or an inhibition

    def plan(self, incidents: list[Incident], now: float, closed: list[Incident] = ()) -> Plan:
        """One pass over the open ``incidents``. ``closed``: incidents the engine never saw
        open (opened and resolved between two flushes): each matching route gets them once,
        whatever its timers say, so no incident goes unsaid."""
        plan = Plan()
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
            body = None
            for i, route in self._matching(inc):
                st = self.route_state.get((i, inc.id))
                if st is None:
                    st = self.route_state[(i, inc.id)] = RouteState(now)
                if decide(route, st, inc.version, now) is not None:
                    body = body or payload(inc)
                    plan.batch.append((route.receiver, inc.id, body))
                    plan.advance.append((st, inc.version))
        for key in [k for k in self.route_state if k[1] not in live]:  # closed incidents
            del self.route_state[key]
        for key in [k for k in self.quiet if k not in live]:
            del self.quiet[key]
        for inc in closed:
            if self.muter.reason(inc, incidents, now) is not None:
                continue
            body = None
            for _, route in self._matching(inc):
                body = body or payload(inc)
                plan.batch.append((route.receiver, inc.id, body))
        return plan

    @staticmethod
    def commit(plan: Plan, now: float) -> None:
        """The plan's batch is in the outbox: its timers move."""
        for st, version in plan.advance:
            st.last_sent, st.sent_version = now, version

    def settle(self, incidents: list[Incident], latest: Callable[[str, str], tuple | None], now: float) -> int:
        """After a restart: count as sent what the outbox shows was already queued or sent.

        ``latest(receiver, incident id)`` is the outbox's newest row (payload, created_at,
        sent_at) or None. Returns how many timers were reconciled."""
        reconciled = 0
        for inc in incidents:
            body = None
            for i, route in self._matching(inc):
                row = latest(route.receiver, inc.id)
                if row is None:
                    continue
                body = body or payload(inc)
                st = self.route_state.get((i, inc.id))
                if row[0] == body and (st is None or st.sent_version != inc.version):
                    if st is None:
                        st = self.route_state[(i, inc.id)] = RouteState(now)
                    st.last_sent = min(now, row[2] or row[1])
                    st.sent_version = inc.version
                    reconciled += 1
        return reconciled

    def _matching(self, inc: Incident):
        """(index, route) of the routes an incident goes to, in order, as far as ``continue`` allows."""
        for i, route in enumerate(self.routes):
            if matches(route, inc.severity, inc.kinds, inc.symbols):
                yield i, route
                if not route.continue_:
                    return
