"""The durable outbox: a notification is written before it is sent, and marked sent only
after the receiver said 2xx. Pending rows survive a crash; a restart sends them.

One row per (receiver, incident) is pending at a time: a newer state of an incident
replaces the older unsent payload, so a receiver that was down for hours gets the latest
state of each incident, not a flood.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

DDL = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    receiver TEXT NOT NULL,
    incident_id TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    sent_at REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (sent_at, next_attempt_at);
CREATE UNIQUE INDEX IF NOT EXISTS outbox_one_pending ON outbox (receiver, incident_id) WHERE sent_at IS NULL;
"""


class Outbox:
    def __init__(self, path: str | Path) -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, timeout=5.0, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(DDL)
        self._lock = threading.Lock()

    def enqueue(self, receiver: str, incident_id: str, payload: bytes, now: float | None = None) -> None:
        """Durably queue (or replace the pending) notification of an incident for a receiver."""
        now = time.time() if now is None else now
        with self._lock:
            self.db.execute(
                "INSERT INTO outbox (receiver, incident_id, payload, created_at, next_attempt_at)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (receiver, incident_id) WHERE sent_at IS NULL"
                " DO UPDATE SET payload = excluded.payload",
                (receiver, incident_id, payload, now, now))

    def due(self, now: float | None = None, limit: int = 100) -> list[tuple[int, str, str, bytes, int]]:
        now = time.time() if now is None else now
        with self._lock:
            return self.db.execute(
                "SELECT id, receiver, incident_id, payload, attempts FROM outbox"
                " WHERE sent_at IS NULL AND next_attempt_at <= ? ORDER BY id LIMIT ?", (now, limit)).fetchall()

    def mark_sent(self, row_id: int, now: float | None = None) -> None:
        with self._lock:
            self.db.execute("UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE id = ?",
                            (time.time() if now is None else now, row_id))

    def mark_failed(self, row_id: int, retry_at: float, error: str) -> None:
        with self._lock:
            self.db.execute("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                            " WHERE id = ?", (retry_at, error[:300], row_id))

    def pending(self) -> int:
        with self._lock:
            return self.db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0]

    def oldest_pending_age(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        with self._lock:
            oldest = self.db.execute("SELECT min(created_at) FROM outbox WHERE sent_at IS NULL").fetchone()[0]
        return max(0.0, now - oldest) if oldest is not None else 0.0

    def purge_sent(self, older_than: float) -> int:
        with self._lock:
            return self.db.execute("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < ?",
                                   (older_than,)).rowcount

    def close(self) -> None:
        with self._lock:
            self.db.close()
