"""Anomalies decided but not yet committed, and what happens when the store fails.

A full disk, a write lock held by another process or a read-only file system must cost
the store's writes, never the daemon or an anomaly:

- the flusher writes the oldest ``batch`` held anomalies in one transaction; a failed
  write keeps them held and is retried after a capped, jittered backoff (0.5 s .. 30 s);
- held anomalies are bounded by ``max_held``: past it the oldest go to a spill file
  (JSON lines, one CONTRACT anomaly each, mode 0600) in the state directory; if even
  that write fails (the same full disk) they are counted as lost, never silently;
- when the store takes writes again, the spill file is read back into it (ids are
  content hashes, so an anomaly written twice is one row), and on stop whatever is still
  held is spilled, so the next start stores it.

Everything here is counted for ``/metrics`` and ``/healthz``. The clock is passed in.

>>> h = Held(max_held=2, spill_path=None)
>>> h.add(["a", "b", "c"]); h.lost, list(h.queue)   # no spill file configured: counted as lost
(1, ['b', 'c'])
>>> delay = h.failed("database is locked", now=10.0, wall=1000.0); h.due(10.1), h.failing_since
(False, 1000.0)
>>> h.committed(2), h.healthy, len(h.queue)
(True, True, 0)
"""

from __future__ import annotations

import os
import random
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator

import msgspec

from monitor.events import Anomaly

RETRY_FIRST_S = 0.5
RETRY_CAP_S = 30.0
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Anomaly).decode


class Held:
    def __init__(self, max_held: int, spill_path: Path | None, rng: random.Random | None = None) -> None:
        self.queue: deque = deque()
        self.max_held = max_held
        self.spill_path = spill_path
        self.spilled = 0  # anomalies appended to the spill file, ever
        self.unspilled = 0  # anomalies read back from it into the store
        self.lost = 0  # anomalies that could be neither stored nor spilled
        self.errors = 0  # failed store writes
        self.failing_since: float | None = None  # wall time of the first failure of this episode
        self.last_error = ""
        self._retry_at = 0.0
        self._attempt = 0
        self._rng = rng or random.Random()

    @property
    def healthy(self) -> bool:
        return self.failing_since is None

    def add(self, anomalies: Iterable) -> None:
        self.queue.extend(anomalies)
        over = len(self.queue) - self.max_held
        if over > 0:
            self.spill([self.queue.popleft() for _ in range(over)])

    def due(self, now: float) -> bool:
        return bool(self.queue) and now >= self._retry_at

    def batch(self, n: int) -> list:
        q = self.queue
        return list(q) if len(q) <= n else [q[i] for i in range(n)]

    def committed(self, n: int) -> bool:
        """The oldest ``n`` are in the store. True when this ends a failure episode."""
        for _ in range(n):
            self.queue.popleft()
        recovered = self.failing_since is not None
        self.failing_since, self._attempt, self._retry_at = None, 0, 0.0
        return recovered

    def failed(self, error: str, now: float, wall: float) -> float:
        """A write failed: keep everything, retry later. Returns the delay chosen."""
        self.errors += 1
        self.last_error = error[:300]
        if self.failing_since is None:
            self.failing_since = wall
        delay = max(RETRY_FIRST_S, self._rng.uniform(0, min(RETRY_CAP_S, RETRY_FIRST_S * 2 ** self._attempt)))
        self._attempt += 1
        self._retry_at = now + delay
        return delay

    # -- the spill file ------------------------------------------------------------------
    def spill(self, anomalies: list) -> None:
        if not anomalies:
            return
        if self.spill_path is None:
            self.lost += len(anomalies)
            return
        try:
            fd = os.open(self.spill_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "ab") as f:
                f.write(b"".join(_encode(a) + b"\n" for a in anomalies))
            self.spilled += len(anomalies)
        except OSError:
            self.lost += len(anomalies)

    def spill_all(self) -> int:
        """On stop: what is still held goes to the spill file (or is counted lost)."""
        n = len(self.queue)
        self.spill(list(self.queue))
        self.queue.clear()
        return n

    def has_spill(self) -> bool:
        return self.spill_path is not None and self.spill_path.exists()


def read_spill(path: Path, batch: int = 5000) -> Iterator[list[Anomaly]]:
    """The spill file in batches; a line that does not decode (a torn last write) is skipped."""
    out: list[Anomaly] = []
    with open(path, "rb") as f:
        for line in f:
            try:
                out.append(_decode(line))
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            if len(out) >= batch:
                yield out
                out = []
    if out:
        yield out
