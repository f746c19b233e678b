"""The durable outbox: a notification is written before it is sent, and marked sent only
after the receiver said 2xx. Pending rows survive a crash; a restart sends them.

One row per (receiver, incident) is pending at a time: a newer state of an incident
replaces the older unsent payload, so a receiver that was down for hours gets the latest
state of each incident, not a flood.

A row's life ends at ``sent_at``: delivered (a 2xx), or given up when ``expired_at`` is
also set (the engine's attempt/age policy, see ``alerts/engine.py``; ``last_error`` says
why). Expired rows leave the pending count and the one-pending-row index like sent ones,
so a later state of the incident gets a fresh row; retention purges both.

``mark_sent`` only marks the payload that was actually sent: if a newer state replaced
it while the POST was in flight, the row stays pending and the newer state goes out next.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from monitor.store import connect, count

class Outbox:
    """The ``outbox`` table (its schema: ``monitor.store.MIGRATIONS``)."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.db = connect(path, readonly=readonly)
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

    def due(self, now: float | None = None, limit: int = 100, receiver: str | None = None,
            exclude: list[str] | None = None) -> list[tuple[int, str, str, bytes, int, float]]:
        """Pending rows whose time has come, oldest first: (id, receiver, incident_id,
        payload, attempts, created_at); of one receiver, or of any receiver not in ``exclude``."""
        now = time.time() if now is None else now
        where, args = "sent_at IS NULL AND next_attempt_at <= ?", [now]
        if receiver is not None:
            where += " AND receiver = ?"
            args.append(receiver)
        if exclude:
            where += f" AND receiver NOT IN ({', '.join('?' * len(exclude))})"
            args.extend(exclude)
        with self._lock:
            return self.db.execute(
                "SELECT id, receiver, incident_id, payload, attempts, created_at FROM outbox"
                f" WHERE {where} ORDER BY id LIMIT ?", (*args, limit)).fetchall()

    def mark_sent(self, row_id: int, now: float | None = None, payload: bytes | None = None) -> bool:
        """Mark a row delivered; with ``payload``, only if the row still holds that payload
        (False: a newer state replaced it in flight, and it stays pending)."""
        now = time.time() if now is None else now
        with self._lock:
            if payload is None:
                cur = self.db.execute("UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE id = ?",
                                      (now, row_id))
            else:
                cur = self.db.execute("UPDATE outbox SET sent_at = ?, attempts = attempts + 1"
                                      " WHERE id = ? AND payload = ?", (now, row_id, payload))
                if cur.rowcount == 0:
                    self.db.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", (row_id,))
            return cur.rowcount > 0

    def mark_expired(self, row_id: int, error: str, now: float | None = None) -> None:
        """Give up on a row (its attempt limit or age is reached): it leaves the queue."""
        now = time.time() if now is None else now
        with self._lock:
            self.db.execute("UPDATE outbox SET attempts = attempts + 1, sent_at = ?, expired_at = ?, last_error = ?"
                            " WHERE id = ?", (now, now, error[:300], row_id))

    def latest(self, receiver: str, incident_id: str) -> tuple[bytes, float, float | None] | None:
        """The newest row of an incident for a receiver: (payload, created_at, sent_at),
        sent_at None while pending; expired rows do not count (they were not delivered)."""
        with self._lock:
            return self.db.execute(
                "SELECT payload, created_at, sent_at FROM outbox WHERE incident_id = ? AND receiver = ?"
                " AND expired_at IS NULL ORDER BY id DESC LIMIT 1", (incident_id, receiver)).fetchone()

    def mark_failed(self, row_id: int, retry_at: float, error: str) -> None:
        with self._lock:
            self.db.execute("UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
                            " WHERE id = ?", (retry_at, error[:300], row_id))

    def pending(self) -> int:
        return count(self.db, self._lock, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") or 0

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
