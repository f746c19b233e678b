"""Incidents in the store, for `perpwatch incidents` and `perpwatch incident ID`.

``status`` is ``firing`` while the incident is open in a running daemon, then the way it
ended: ``resolved`` (quiet for ``resolve_after`` of event time, or evicted at the open
bound), ``merged`` (into another incident, named in its timeline) or ``abandoned``: the
process that held it open stopped without a checkpoint that has it (SIGKILL, a crash, a
checkpoint from before it opened), so at the next start nobody can resume it; its
timeline's last entry says so. A restart never leaves an incident firing that no running
daemon holds.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from alerts.correlate import Incident
from monitor.store import connect, count

_encode = msgspec.json.Encoder().encode


class IncidentTable:
    """The ``incidents`` table (its schema: ``monitor.store.MIGRATIONS``)."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.db = connect(path, readonly=readonly)
        self._lock = threading.Lock()

    @staticmethod
    def rows(incidents: list[Incident]) -> list[tuple]:
        """The rows of incidents as they are now (build them where the incidents live)."""
        return [(i.id, i.opened_ts, i.last_ts, i.severity, i.status, i.title(), _encode(sorted(i.symbols)).decode(),
                 _encode(sorted(i.accounts)).decode(), _encode(i.timeline_view()).decode(), time.time())
                for i in incidents]

    def write_rows(self, rows: list[tuple]) -> None:
        with self._lock:
            self.db.executemany("INSERT OR REPLACE INTO incidents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def upsert(self, incidents: list[Incident]) -> None:
        self.write_rows(self.rows(incidents))

    def abandon_firing(self, keep: set[str], reason: str, batch: int = 500) -> list[str]:
        """Close every incident stored as firing whose id is not in ``keep`` (the ones a
        restored checkpoint holds) as ``abandoned``, with ``reason`` at the end of its
        timeline. Returns their ids."""
        with self._lock:
            firing = self.db.execute("SELECT id, last_ts, timeline FROM incidents WHERE status = 'firing'").fetchall()
        dead = [(i, ts, tl) for i, ts, tl in firing if i not in keep]
        now = time.time()
        for k in range(0, len(dead), batch):
            rows = []
            for incident_id, last_ts, timeline in dead[k:k + batch]:
                entries = msgspec.json.decode(timeline)
                entries.append({"ts": last_ts, "anomaly_id": None, "kind": "abandoned", "severity": "info",
                                "symbol": None, "account": None, "reason": reason})
                rows.append((_encode(entries).decode(), now, incident_id))
            with self._lock:
                self.db.executemany("UPDATE incidents SET status = 'abandoned', timeline = ?, updated_at = ?"
                                    " WHERE id = ? AND status = 'firing'", rows)
        return [d[0] for d in dead]

    def firing(self) -> int:
        """How many incidents are stored as firing (for ``status``)."""
        return count(self.db, self._lock, "SELECT count(*) FROM incidents WHERE status = 'firing'") or 0

    def get_many(self, ids: list[str]) -> list[dict[str, Any]]:
        """The stored rows of these incidents (any order; unknown ids are skipped)."""
        out = []
        for k in range(0, len(ids), 500):
            chunk = ids[k:k + 500]
            out += [self._row(r) for r in self._query(
                f"SELECT * FROM incidents WHERE id IN ({', '.join('?' * len(chunk))})", tuple(chunk))]
        return out

    def count(self) -> int:
        """How many incidents are stored (for the totals ``incidents`` shows)."""
        return count(self.db, self._lock, "SELECT count(*) FROM incidents") or 0

    def list(self, limit: int = 50) -> list[dict[str, Any]]:
        return [self._row(r) for r in self._query("SELECT * FROM incidents ORDER BY last_ts DESC LIMIT ?", (limit,))]

    def get(self, incident_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM incidents WHERE id = ?", (incident_id,))
        return self._row(rows[0]) if rows else None

    def _query(self, sql: str, args: tuple) -> list[tuple]:
        try:
            with self._lock:
                return self.db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []
            raise

    @staticmethod
    def _row(r: tuple) -> dict[str, Any]:
        keys = ("id", "opened_ts", "last_ts", "severity", "status", "title", "symbols", "accounts", "timeline")
        d = dict(zip(keys, r))
        for k in ("symbols", "accounts", "timeline"):
            d[k] = msgspec.json.decode(d[k])
        return d

    def close(self) -> None:
        with self._lock:
            self.db.close()
