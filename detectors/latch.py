"""Event-time re-arm rule: one anomaly when a condition starts, not one per tick.

``Latch.fire(key, now, score, severity)`` is called only on ticks where the condition
holds for ``key`` (a symbol, an account, a (symbol, side) pair). It answers True:

- the first time the condition holds, or after it has been *clear* (not reported as
  holding) for at least ``rearm_ms`` of event time — a new episode;
- during an episode, when it escalates: the severity rises, or the score reaches
  ``escalation`` x the score last fired.

Everything else in a persisting episode is absorbed. Because a holding condition is
reported every tick it holds, "clear for ``rearm_ms``" is simply "no report for
``rearm_ms``", decided lazily at the next report: nothing has to be called on quiet keys.
At most ``max_keys`` episodes are remembered (the stalest forgotten first), so per-account
keys stay bounded.

>>> latch = Latch(rearm_ms=10_000)
>>> [latch.fire("X", t, 5.0, "warning") for t in (0, 250, 500)]
[True, False, False]
>>> latch.fire("X", 750, 11.0, "warning"), latch.fire("X", 1_000, 11.0, "critical")
(True, True)
>>> latch.fire("X", 5_000, 1.0, "warning"), latch.fire("X", 30_000, 1.0, "warning")
(False, True)
"""

from __future__ import annotations

from collections import OrderedDict

from monitor.events import SEVERITY_RANK


class Latch:
    __slots__ = ("rearm_ms", "escalation", "max_keys", "episodes", "absorbed")

    def __init__(self, rearm_ms: int, escalation: float = 2.0, max_keys: int = 100_000) -> None:
        self.rearm_ms = rearm_ms
        self.escalation = escalation
        self.max_keys = max_keys
        # key -> [last fired score, last fired severity rank, last time the condition held]
        self.episodes: OrderedDict[object, list] = OrderedDict()
        self.absorbed = 0  # reports swallowed inside an episode (for metrics and tests)

    def fire(self, key: object, now: int, score: float, severity: str) -> bool:
        rank = SEVERITY_RANK[severity]
        ep = self.episodes.get(key)
        if ep is None or now - ep[2] >= self.rearm_ms:
            self.episodes[key] = [score, rank, now]
            self.episodes.move_to_end(key)
            if len(self.episodes) > self.max_keys:
                self.episodes.popitem(last=False)
            return True
        ep[2] = now
        self.episodes.move_to_end(key)
        if rank > ep[1] or score >= ep[0] * self.escalation > 0:
            ep[0], ep[1] = score, max(rank, ep[1])
            return True
        self.absorbed += 1
        return False

    def active(self, key: object, now: int) -> bool:
        """Whether ``key`` is inside an episode (held within the last ``rearm_ms``)."""
        ep = self.episodes.get(key)
        return ep is not None and now - ep[2] < self.rearm_ms

    def __len__(self) -> int:
        return len(self.episodes)
