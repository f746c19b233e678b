"""The event-time clock: it advances only with events' ``ts`` and emits detector ticks.

Ticks fall on multiples of ``tick_ms``. A quiet stretch is not filled in tick by tick:
after a jump the clock emits the last boundary only and counts the rest as skipped, so
a day-long silence costs one tick, not 345,600.

>>> c = EventClock(tick_ms=250)
>>> c.advance(1_000), c.advance(1_100), c.advance(1_600)
([], [], [1250, 1500])

Event time cannot be poisoned: once the first event has set the time, an event more than
``max_ahead_ms`` ahead of it (``limit``) must pass ``admit``, which refuses it (counted in
``refused_future``; the pipeline applies it nowhere) unless ``resync_after`` such events
arrive in a row, nothing else in between, agreeing with each other within ``max_ahead_ms``:
then the stream really has moved on (a restart from an old checkpoint, a replay spanning
days) and the clock jumps with it. One heartbeat stamped ten years ahead never moves it.
Live, the shell may also give wall time (``set_wall``): nothing beyond wall time plus
``max_ahead_ms`` is ever accepted, not even by a run (this guards the very first event too).

>>> c = EventClock(tick_ms=250, max_ahead_ms=60_000, resync_after=3)
>>> c.advance(1_000)
[]
>>> c.limit
61000
>>> [c.admit(10**12, seen=k) for k in (1, 5, 6, 7)], c.refused_future
([False, False, False, True], 3)
"""

from __future__ import annotations

NO_LIMIT = 1 << 62  # far beyond any millisecond timestamp


class EventClock:
    __slots__ = ("tick_ms", "max_catchup", "first", "now", "next_tick", "skipped", "max_ahead_ms", "resync_after",
                 "limit", "horizon", "refused_future", "resyncs", "_run_ts", "_run_n", "_run_seen")

    def __init__(self, tick_ms: int = 250, max_catchup: int = 8, max_ahead_ms: int | None = 300_000,
                 resync_after: int = 256) -> None:
        if tick_ms <= 0:
            raise ValueError("tick_ms must be > 0")
        if max_ahead_ms is not None and max_ahead_ms <= 0:
            raise ValueError("max_ahead_ms must be > 0 (or None: no guard)")
        if resync_after < 1:
            raise ValueError("resync_after must be >= 1")
        self.tick_ms = tick_ms
        self.max_catchup = max_catchup
        self.first = 0  # the first event time seen
        self.now = 0  # the latest event time seen
        self.next_tick = 0
        self.skipped = 0
        self.max_ahead_ms = max_ahead_ms
        self.resync_after = resync_after
        self.limit = NO_LIMIT  # an event with ts above this must pass ``admit``
        self.horizon = NO_LIMIT  # wall time + max_ahead_ms, when the shell gives wall time
        self.refused_future = 0  # events refused for being too far ahead
        self.resyncs = 0  # jumps accepted after a consistent run of future events
        self._run_ts = 0  # the current run of future events: its first ts, length, last event index
        self._run_n = 0
        self._run_seen = -1

    def __getstate__(self):
        return {k: getattr(self, k) for k in self.__slots__}

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple):  # a checkpoint from before __getstate__: (None, slots)
            state = state[1]
        fresh = EventClock(state["tick_ms"])
        for k in self.__slots__:
            setattr(self, k, state.get(k, getattr(fresh, k)))
        if "limit" not in state:
            self._set_limit()

    def _set_limit(self) -> None:
        if self.max_ahead_ms is None:
            self.limit = NO_LIMIT
        elif self.next_tick:
            self.limit = min(self.now + self.max_ahead_ms, self.horizon)
        else:
            self.limit = self.horizon

    def set_wall(self, wall_ms: int) -> None:
        """Live only: nothing beyond ``wall_ms + max_ahead_ms`` is accepted from now on."""
        if self.max_ahead_ms is not None:
            self.horizon = wall_ms + self.max_ahead_ms
            self._set_limit()

    def admit(self, ts: int, seen: int) -> bool:
        """An event beyond ``limit``: True if it is accepted (the clock may jump with it).
        ``seen`` numbers the events (consecutive events differ by 1), to tell a run apart."""
        if ts > self.horizon:
            self.refused_future += 1
            return False
        if not self.next_tick:
            return True
        if self._run_n and seen == self._run_seen + 1 and abs(ts - self._run_ts) <= (self.max_ahead_ms or 0):
            self._run_n += 1
        else:
            self._run_ts, self._run_n = ts, 1
        self._run_seen = seen
        if self._run_n >= self.resync_after:
            self._run_n = 0
            self.resyncs += 1
            return True
        self.refused_future += 1
        return False

    def advance(self, ts: int) -> list[int]:
        """Move event time to ``ts``; return the tick times crossed (oldest first)."""
        if ts <= self.now:  # a late event (another source lags) never moves time back
            return []
        self.now = ts
        if self.next_tick == 0:
            self.first = ts
            self.next_tick = (ts // self.tick_ms + 1) * self.tick_ms
            self._set_limit()
            return []
        self._set_limit()
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
