"""Routing: which receivers hear about an incident, and when (Alertmanager's timers).

The decision is a pure function of (route state, incident, now) returning a reason:
``group_wait`` holds a new incident's first notification to gather more signals;
``group_interval`` spaces updates of a changed incident; ``repeat_interval`` re-sends an
unchanged open one. Routes are tried in order; a match stops the walk unless it says
``continue``. Timers run on the wall clock: they are about people, not about the market.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from monitor.config import RouteConfig, severity_at_least


def matches(route: RouteConfig, severity: str, kinds: set[str], symbols: set[str]) -> bool:
    if not severity_at_least(severity, route.min_severity):
        return False
    if route.kinds and not (kinds & set(route.kinds)):
        return False
    if route.symbols and not any(fnmatchcase(s, g) for s in symbols for g in route.symbols):
        return False
    return True


class RouteState:
    __slots__ = ("first_seen", "last_sent", "sent_version")

    def __init__(self, now: float) -> None:
        self.first_seen = now
        self.last_sent: float | None = None
        self.sent_version = -1


def decide(route: RouteConfig, st: RouteState, version: int, now: float) -> str | None:
    """Why to send now ("first", "update", "repeat"), or None to hold."""
    if st.last_sent is None:
        return "first" if now - st.first_seen >= route.group_wait.seconds else None
    if version != st.sent_version:
        return "update" if now - st.last_sent >= route.group_interval.seconds else None
    return "repeat" if now - st.last_sent >= route.repeat_interval.seconds else None
