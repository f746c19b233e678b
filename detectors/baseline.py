"""Per-feature online baselines with an explicit learn policy.

A ``Baseline`` is river's exponentially weighted mean and variance of one feature, plus
the rules river's threshold filters get wrong for bursts: a warm-up count before any
score counts, a floor under the standard deviation (a flat calm market must not turn a
tiny wiggle into a huge z), and *protection*: a value scored as anomalous is not
learned, so a burst does not teach the baseline that bursts are normal. With
``readmit_after`` a level refused that many times in a row is learned after all: a
lasting regime change becomes the new normal instead of alarming forever.

>>> b = Baseline(fading=0.05, warmup=20, std_floor=0.1)
>>> for x in [1.0, 1.2, 0.9, 1.1] * 10:
...     _ = b.observe(x, protect_above=4.0)
>>> round(b.z(1.05), 1), b.z(5.0) > 10, b.ready
(0.1, True, True)
"""

from __future__ import annotations

import math
from itertools import islice

from river import stats


class Baseline:
    __slots__ = ("mean", "var", "n", "warmup", "std_floor", "readmit_after", "refused")

    def __init__(self, fading: float = 0.02, warmup: int = 120, std_floor: float = 0.25,
                 readmit_after: int = 0) -> None:
        self.mean = stats.EWMean(fading_factor=fading)
        self.var = stats.EWVar(fading_factor=fading)
        self.n = 0
        self.warmup = warmup
        self.std_floor = std_floor
        self.readmit_after = readmit_after  # 0: a protected value is never learned
        self.refused = 0  # consecutive values not learned

    @property
    def ready(self) -> bool:
        return self.n >= self.warmup

    def std(self) -> float:
        return max(math.sqrt(max(self.var.get(), 0.0)), self.std_floor)

    def z(self, x: float) -> float:
        """How many (floored) standard deviations ``x`` sits above the mean."""
        if self.n == 0:
            return 0.0
        return (x - self.mean.get()) / self.std()

    def learn(self, x: float) -> None:
        self.mean.update(x)
        self.var.update(x)
        self.n += 1

    def observe(self, x: float, protect_above: float | None = None, one_sided: bool = False) -> float:
        """Score ``x`` then learn it (score before learn), unless it is anomalous.

        Returns the z-score. With ``protect_above``, a value whose |z| (``one_sided``: z)
        reaches it after warm-up is not learned — unless ``readmit_after`` values in a row
        were refused, in which case this one is learned (a regime change).
        """
        z = self.z(x)
        if protect_above is not None and self.ready and (z if one_sided else abs(z)) >= protect_above:
            self.refused += 1
            if not self.readmit_after or self.refused < self.readmit_after:
                return z
        self.refused = 0
        self.learn(x)
        return z

    def snapshot(self) -> dict[str, float]:
        return {"mean": round(self.mean.get(), 6), "std": round(self.std(), 6), "n": self.n}


class Cooldown:
    """Event-time re-arm rule: after a firing, stay quiet for ``ms`` unless it escalates.

    At most ``max_keys`` keys are remembered; the least recently fired are forgotten first
    (a forgotten key may fire again, which is the safe side).

    >>> c = Cooldown(10_000)
    >>> c.allow("X", 1_000, 5.0), c.allow("X", 2_000, 5.0), c.allow("X", 2_000, 11.0), c.allow("X", 30_000, 1.0)
    (True, False, True, True)
    """

    __slots__ = ("ms", "escalation", "max_keys", "last")

    def __init__(self, ms: int, escalation: float = 2.0, max_keys: int = 100_000) -> None:
        self.ms = ms
        self.escalation = escalation  # a score this many times the last one fires through
        self.max_keys = max_keys
        self.last: dict[object, tuple[int, float]] = {}  # insertion order = firing order

    def allow(self, key: object, now: int, score: float) -> bool:
        prev = self.last.get(key)
        if prev is not None and now - prev[0] < self.ms and score < prev[1] * self.escalation:
            return False
        if prev is not None:
            del self.last[key]  # re-inserted last: the newest firing
        self.last[key] = (now, score)
        if len(self.last) > self.max_keys:
            for k in list(islice(self.last, max(1, self.max_keys // 10))):
                del self.last[k]
        return True

    def __len__(self) -> int:
        return len(self.last)


class EventBaseline:
    """A ``Baseline`` whose memory is a time constant of event time, not a weight per tick.

    EW mean and variance (log space, as the callers feed it) where a value observed ``dt``
    ms after the last one learned gets weight ``1 - exp(-dt / tau_ms)``, so the memory is
    the same whatever the tick rate; the first values are averaged plainly (weight
    ``1 / n`` while that is larger), so a young baseline is an honest mean, not its first
    value. Warm-up is event time too: ``ready`` once ``warmup_ms`` has passed since the
    first value learned (and at least two were). The rules of ``Baseline`` hold: a
    ``std_floor``; a value scored at or above ``protect_above`` is not learned, nor is one
    observed with ``hold`` (the caller's key is inside an episode: learning the episode
    while it forms would hide it) -- unless values have been refused for ``readmit_ms`` of
    event time in a row, when the level is learned after all (a lasting regime change
    becomes the new normal instead of alarming or freezing forever).

    >>> b = EventBaseline(tau_ms=60_000, warmup_ms=10_000, std_floor=0.1)
    >>> for i in range(80):  # 20 s of 250 ms ticks
    ...     _ = b.observe([1.0, 1.2, 0.9, 1.1][i % 4], now=i * 250, protect_above=4.0)
    >>> b.ready, round(b.z(1.05), 1), b.observe(5.0, now=20_000, protect_above=4.0) > 10, b.n
    (True, 0.0, True, 80)
    """

    __slots__ = ("tau_ms", "warmup_ms", "std_floor", "readmit_ms", "mean", "var", "n", "first_ts", "last_ts",
                 "refused_since")

    def __init__(self, tau_ms: float, warmup_ms: float, std_floor: float = 0.25, readmit_ms: float = 0) -> None:
        if tau_ms <= 0:
            raise ValueError("tau_ms must be > 0")
        self.tau_ms = tau_ms
        self.warmup_ms = warmup_ms
        self.std_floor = std_floor
        self.readmit_ms = readmit_ms  # 0: a refused value is never learned
        self.mean = 0.0
        self.var = 0.0
        self.n = 0
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.refused_since: int | None = None  # event time of the first refusal in the current run

    @property
    def ready(self) -> bool:
        return self.n >= 2 and self.last_ts is not None and self.last_ts - self.first_ts >= self.warmup_ms

    def std(self) -> float:
        return max(math.sqrt(max(self.var, 0.0)), self.std_floor)

    def z(self, x: float) -> float:
        """How many (floored) standard deviations ``x`` sits above the mean."""
        if self.n == 0:
            return 0.0
        return (x - self.mean) / self.std()

    def learn(self, x: float, now: int) -> None:
        if self.n == 0:
            self.mean, self.var, self.first_ts = x, 0.0, now
        else:
            dt = max(now - self.last_ts, 0)
            alpha = max(1.0 - math.exp(-dt / self.tau_ms), 1.0 / (self.n + 1))
            d = x - self.mean
            self.mean += alpha * d
            self.var = (1.0 - alpha) * (self.var + alpha * d * d)
        self.n += 1
        self.last_ts = now

    def observe(self, x: float, now: int, protect_above: float | None = None, one_sided: bool = False,
                hold: bool = False) -> float:
        """Score ``x`` at event time ``now``, then learn it unless it is anomalous or ``hold``.

        Returns the z-score (before learning)."""
        z = self.z(x)
        refuse = hold or (protect_above is not None and self.ready
                          and (z if one_sided else abs(z)) >= protect_above)
        if refuse:
            if self.refused_since is None:
                self.refused_since = now
            if not self.readmit_ms or now - self.refused_since < self.readmit_ms:
                return z
        self.refused_since = None
        self.learn(x, now)
        return z

    def snapshot(self) -> dict[str, float]:
        return {"mean": round(self.mean, 6), "std": round(self.std(), 6), "n": self.n, "tau_ms": self.tau_ms}
