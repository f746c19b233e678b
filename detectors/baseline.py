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
