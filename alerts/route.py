"""Routing: which receivers hear about an incident, and when (Alertmanager's timers).

The decision is a pure function of (route state, incident, now) returning a reason:
``group_wait`` holds a new incident's first notification to gather more signals;
``group_interval`` spaces updates of a changed incident — except an *escalation* (a
higher severity than last sent, or a kind not in what was last sent: a cascade_risk above
all), which goes at once; ``repeat_interval`` re-sends an unchanged open one. Routes are
tried in order; a match stops the walk unless it says ``continue``. Timers run on the wall
clock: they are about people, not about the market.

>>> from monitor.config import RouteConfig, Duration
>>> r = RouteConfig(receiver="x", group_interval=Duration.parse("1m"))
>>> st = RouteState(0.0)
>>> decide(r, st, 1, 0.0, "warning", {"leverage_jump"})
'first'
>>> st.sent(0.0, 1, "warning", {"leverage_jump"})
>>> decide(r, st, 2, 5.0, "warning", {"leverage_jump"}), decide(r, st, 3, 5.0, "critical", {"leverage_jump", "cascade_risk"})
(None, 'escalation')
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from monitor.config import RouteConfig, severity_at_least
from monitor.events import SEVERITY_RANK


def matches(route: RouteConfig, severity: str, kinds: set[str], symbols: set[str]) -> bool:
    if not severity_at_least(severity, route.min_severity):
        return False
    if route.kinds and not (kinds & set(route.kinds)):
        return False
    if route.symbols and not any(fnmatchcase(s, g) for s in symbols for g in route.symbols):
        return False
    return True


class RouteState:
    __slots__ = ("first_seen", "last_sent", "sent_version", "sent_rank", "sent_kinds", "notifications")

    def __init__(self, now: float) -> None:
        self.first_seen = now
        self.last_sent: float | None = None
        self.sent_version = -1
        self.sent_rank = -1  # severity rank last sent
        self.sent_kinds: frozenset[str] = frozenset()  # kinds last sent
        self.notifications = 0  # sent so far (the payload's sequence)

    def sent(self, now: float, version: int, severity: str | None = None, kinds=()) -> None:
        """A notification of this state is in the outbox."""
        self.last_sent, self.sent_version = now, version
        self.sent_rank = SEVERITY_RANK.get(severity, -1) if severity else -1
        self.sent_kinds = frozenset(kinds)
        self.notifications = getattr(self, "notifications", 0) + 1

    def __setstate__(self, state) -> None:  # a checkpoint from before escalations: unknown slots get defaults
        self.__init__(0.0)
        for k, v in (state[1] if isinstance(state, tuple) else state).items():
            setattr(self, k, v)

    def __getstate__(self):
        return (None, {k: getattr(self, k) for k in self.__slots__ if hasattr(self, k)})


def escalates(st: RouteState, severity: str | None, kinds) -> bool:
    """The incident says more than what was last sent: a higher severity, or a new kind."""
    if severity is None:
        return False
    return SEVERITY_RANK.get(severity, -1) > st.sent_rank or not set(kinds) <= st.sent_kinds


def decide(route: RouteConfig, st: RouteState, version: int, now: float, severity: str | None = None,
           kinds=()) -> str | None:
    """Why to send now ("first", "escalation", "update", "repeat"), or None to hold."""
    if st.last_sent is None:
        return "first" if now - st.first_seen >= route.group_wait.seconds else None
    if version != st.sent_version:
        if escalates(st, severity, kinds):
            return "escalation"
        return "update" if now - st.last_sent >= route.group_interval.seconds else None
    return "repeat" if now - st.last_sent >= route.repeat_interval.seconds else None
