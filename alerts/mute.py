"""Why an incident stays quiet right now: silences and inhibitions behind one question.

- **Silence**: every anomaly of the incident matches an active silence (``alerts/silence``).
- **Inhibition**: an open *critical* incident already carries every (kind, symbol) of a
  lesser incident, so the lesser one would only repeat what the critical one is saying
  (a cancel burst that outlives the incident window, say). One new kind or symbol is
  enough to speak again.

``Muter.reason`` is a pure function of (incident, open incidents, silences, now) and
returns the reason, or None to let the incident through.

>>> from monitor.events import Anomaly
>>> from alerts.correlate import Incident
>>> crit = Incident(Anomaly.make("cascade_risk", 1, 3.0, "critical", symbol="BTC"))
>>> crit.add(Anomaly.make("cancel_burst", 1, 5.0, "warning", symbol="BTC"), "opened")
>>> late = Incident(Anomaly.make("cancel_burst", 9, 5.0, "warning", symbol="BTC"))
>>> late.add(Anomaly.make("cancel_burst", 9, 5.0, "warning", symbol="BTC"), "opened")
>>> Muter().reason(late, [crit, late], now=0.0) == f"inhibited by {crit.id}"
True
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable

import msgspec

from alerts.correlate import Incident
from monitor.events import Anomaly


def inhibitor(inc: Incident, open_incidents: Iterable[Incident]) -> Incident | None:
    """The open critical incident that already says everything ``inc`` says, if any."""
    if inc.severity == "critical" or not inc.anomalies:
        return None
    said = {(a.kind, a.symbol) for a in inc.anomalies}
    for other in open_incidents:
        if other is inc or other.severity != "critical" or other.status != "firing":
            continue
        if said <= {(a.kind, a.symbol) for a in other.anomalies}:
            return other
    return None


class Silence(msgspec.Struct, frozen=True):
    id: str
    symbol: str | None
    kind: str | None
    account: str | None
    starts_at: float
    ends_at: float
    comment: str = ""

    def active(self, now: float) -> bool:
        return self.starts_at <= now < self.ends_at

    def matches(self, a: Anomaly) -> bool:
        if self.kind is not None and a.kind != self.kind:
            return False
        if self.symbol is not None and not fnmatchcase(a.symbol or "", self.symbol):
            return False
        if self.account is not None and not fnmatchcase(a.account or "", self.account):
            return False
        return True


def muted(anomalies: list[Anomaly], silences: list[Silence], now: float) -> bool:
    """True when every anomaly is matched by an active silence (and there is one)."""
    live = [s for s in silences if s.active(now)]
    return bool(live) and bool(anomalies) and all(any(s.matches(a) for s in live) for a in anomalies)


class Muter:
    def __init__(self, silences: list[Silence] | None = None) -> None:
        self.silences = silences or []

    def reason(self, inc: Incident, open_incidents: Iterable[Incident], now: float) -> str | None:
        """"silenced", "inhibited by <incident id>", or None (wall-clock ``now`` for silences)."""
        if muted(inc.anomalies, self.silences, now):
            return "silenced"
        src = inhibitor(inc, open_incidents)
        return f"inhibited by {src.id}" if src is not None else None
