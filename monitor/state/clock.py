"""The event-time clock: it advances only with events' ``ts`` and emits detector ticks.

Ticks fall on multiples of ``tick_ms``. A quiet stretch is not filled in tick by tick:
after a jump the clock emits the last boundary only and counts the rest as skipped, so
a day-long silence costs one tick, not 345,600.

>>> c = EventClock(tick_ms=250)
>>> c.advance(1_000), c.advance(1_100), c.advance(1_600)
([], [], [1250, 1500])
"""

from __future__ import annotations


class EventClock:
    __slots__ = ("tick_ms", "max_catchup", "first", "now", "next_tick", "skipped")

    def __init__(self, tick_ms: int = 250, max_catchup: int = 8) -> None:
        if tick_ms <= 0:
            raise ValueError("tick_ms must be > 0")
        self.tick_ms = tick_ms
        self.max_catchup = max_catchup
        self.first = 0  # the first event time seen
        self.now = 0  # the latest event time seen
        self.next_tick = 0
        self.skipped = 0

    def advance(self, ts: int) -> list[int]:
        """Move event time to ``ts``; return the tick times crossed (oldest first)."""
        if ts <= self.now:  # a late event (another source lags) never moves time back
            return []
        self.now = ts
        if self.next_tick == 0:
            self.first = ts
            self.next_tick = (ts // self.tick_ms + 1) * self.tick_ms
            return []
        if ts < self.next_tick:
            return []
        step = self.tick_ms
        last = ts - ts % step
        n = (last - self.next_tick) // step + 1
        if n > self.max_catchup:
            self.skipped += n - self.max_catchup
            first = last - (self.max_catchup - 1) * step
        else:
            first = self.next_tick
        self.next_tick = last + step
        return list(range(first, last + 1, step))
