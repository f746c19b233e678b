"""Incidents in the store, for `perpwatch incidents` and `perpwatch incident ID`."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

from alerts.correlate import Incident

DDL = """
CREATE TABLE IF NOT EXISTS incidents (
    id TEXT PRIMARY KEY,
    opened_ts INTEGER NOT NULL,
    last_ts INTEGER NOT NULL,
    severity TEXT NOT NULL,
    status TEXT NOT NULL,
    title TEXT NOT NULL,
    symbols TEXT NOT NULL,
    accounts TEXT NOT NULL,
    timeline TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS incidents_last ON incidents (last_ts);
"""
_encode = msgspec.json.Encoder().encode


class IncidentTable:
    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        if readonly:
            self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        else:
            self.db = sqlite3.connect(path, check_same_thread=False, timeout=5.0, isolation_level=None)
            self.db.executescript(DDL)
        self._lock = threading.Lock()

    def upsert(self, incidents: list[Incident]) -> None:
        rows = [(i.id, i.opened_ts, i.last_ts, i.severity, i.status, i.title(), _encode(sorted(i.symbols)).decode(),
                 _encode(sorted(i.accounts)).decode(), _encode(i.timeline_view()).decode(), time.time())
                for i in incidents]
        with self._lock:
            self.db.executemany("INSERT OR REPLACE INTO incidents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

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
