"""Silences: stored mutes with matchers and an expiry, set from the CLI, honoured by the
running daemon within seconds (it re-reads the table every ``POLL_S``).

A silence matches an anomaly when every matcher it sets matches (symbol and account are
globs, kind is exact). An incident is muted for delivery when every anomaly in it is
matched by some active silence: one unsilenced anomaly is enough to speak.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from alerts.mute import Silence, muted  # noqa: F401 (the pure parts live with the muter)
from monitor.store import connect

POLL_S = 2.0


class SilenceTable:
    """The ``silences`` table (its schema: ``monitor.store.MIGRATIONS``)."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        """``readonly``: for listing (never creates nor migrates the file)."""
        self.db = connect(path, readonly=readonly)
        self._lock = threading.Lock()

    def add(self, *, symbol: str | None, kind: str | None, account: str | None, seconds: float,
            comment: str, now: float | None = None) -> Silence:
        if symbol is None and kind is None and account is None:
            raise ValueError("a silence needs at least one of --symbol, --kind, --account")
        now = time.time() if now is None else now
        s = Silence(uuid.uuid4().hex[:12], symbol, kind, account, now, now + seconds, comment)
        with self._lock:
            self.db.execute("INSERT INTO silences VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (s.id, s.symbol, s.kind, s.account, s.starts_at, s.ends_at, s.comment, now))
        return s

    def expire(self, silence_id: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        with self._lock:
            return self.db.execute("UPDATE silences SET ends_at = ? WHERE id = ? AND ends_at > ?",
                                   (now, silence_id, now)).rowcount == 1

    def all(self, include_expired: bool = False, now: float | None = None) -> list[Silence]:
        now = time.time() if now is None else now
        sql = "SELECT id, symbol, kind, account, starts_at, ends_at, comment FROM silences"
        args: tuple[Any, ...] = ()
        if not include_expired:
            sql += " WHERE ends_at > ?"
            args = (now,)
        with self._lock:
            try:
                rows = self.db.execute(sql + " ORDER BY starts_at", args).fetchall()
            except sqlite3.OperationalError as e:
                if "no such table" in str(e):  # a store from before silences existed, read-only
                    return []
                raise
        return [Silence(*r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self.db.close()
