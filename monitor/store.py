"""The local anomaly store: SQLite in WAL mode.

One writer (the daemon, from a single worker thread so the event loop never waits on
disk) and any number of readers (the CLI) that never block it: WAL lets readers see
the last committed state while the writer goes on. Anomaly ids are content hashes,
so writing the same anomaly twice (a replay, a restart) is a no-op.

>>> import tempfile, os
>>> from monitor.events import Anomaly
>>> path = os.path.join(tempfile.mkdtemp(), "pw.db")
>>> s = Store(path)
>>> s.write_anomalies([Anomaly.make("feed_gap", 1_732_400_000_000, 2.0, "warning", symbol="X")])
1
>>> [a["kind"] for a in Store.reader(path).anomalies()]
['feed_gap']
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

import msgspec

from monitor.events import Anomaly

_SCHEMA = [
    # version 1
    """
    CREATE TABLE IF NOT EXISTS anomalies (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        symbol TEXT,
        account TEXT,
        ts INTEGER NOT NULL,
        score REAL NOT NULL,
        severity TEXT NOT NULL,
        detail TEXT NOT NULL,
        detected_at REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS anomalies_ts ON anomalies (ts);
    CREATE INDEX IF NOT EXISTS anomalies_detected ON anomalies (detected_at);
    CREATE INDEX IF NOT EXISTS anomalies_kind_ts ON anomalies (kind, ts);
    CREATE INDEX IF NOT EXISTS anomalies_symbol_ts ON anomalies (symbol, ts);
    """,
]

_COLUMNS = ("id", "kind", "symbol", "account", "ts", "score", "severity", "detail")
_encode = msgspec.json.Encoder().encode
_decode_detail = msgspec.json.Decoder(dict[str, Any]).decode


class StoreError(RuntimeError):
    """The store cannot be opened or read (path, permissions, not a perpwatch store)."""


class Store:
    """A connection to the store. Writers: one per process; use from one thread."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        try:
            if readonly:
                uri = f"file:{self.path}?mode=ro"
                self.db = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=5.0)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _create_private(self.path)
                self.db = sqlite3.connect(self.path, check_same_thread=False, timeout=5.0,
                                          isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
                self._migrate()
        except sqlite3.Error as e:
            raise StoreError(f"cannot open store {str(self.path)!r}: {e}") from None
        self._lock = threading.Lock()

    @classmethod
    def reader(cls, path: str | Path) -> Store:
        """A read-only connection; never blocks (nor is blocked by) the daemon's writes."""
        if not Path(path).exists():
            raise StoreError(f"no store at {str(path)!r} (has the daemon run with this config?)")
        return cls(path, readonly=True)

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        for i, ddl in enumerate(_SCHEMA[version:], start=version + 1):
            self.db.executescript(f"BEGIN; {ddl}; PRAGMA user_version={i}; COMMIT;")

    def extend_schema(self, name: str, ddl: str) -> None:
        """Idempotent DDL for tables owned by other modules (alerts, ops)."""
        with self._lock:
            self.db.executescript(ddl)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    # -- anomalies ---------------------------------------------------------------------
    def write_anomalies(self, anomalies: Iterable[Anomaly], detected_at: float | None = None) -> int:
        """Insert a batch in one transaction; returns how many were new."""
        now = time.time() if detected_at is None else detected_at
        rows = [(a.id, a.kind, a.symbol, a.account, a.ts, a.score, a.severity, _encode(a.detail).decode(), now)
                for a in anomalies]
        if not rows:
            return 0
        with self._lock:
            before = self.db.total_changes
            self.db.execute("BEGIN")
            try:
                self.db.executemany(
                    "INSERT OR IGNORE INTO anomalies (id, kind, symbol, account, ts, score, severity,"
                    " detail, detected_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self.db.execute("COMMIT")
            except BaseException:
                # a failed COMMIT (disk full, I/O error) may already have rolled back: a second
                # ROLLBACK would raise "no transaction is active" over the real error
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
            return self.db.total_changes - before

    def import_spill(self, path: Path) -> int:
        """Store the anomalies of a spill file (see monitor.held), then delete it; a failure
        leaves the file for the next try (re-importing is a no-op: ids are content hashes)."""
        from monitor.held import read_spill

        n = 0
        for batch in read_spill(path):
            n += len(batch)
            self.write_anomalies(batch)
        path.unlink()
        return n

    def anomalies(self, *, since_s: float | None = None, kind: str | None = None,
                  symbol: str | None = None, limit: int | None = 100,
                  now: float | None = None) -> list[dict[str, Any]]:
        """Anomalies newest first (by event time), as contract objects.

        ``since_s`` keeps those whose event time *or* detection time is within the last
        ``since_s`` seconds of ``now`` (wall clock): a live anomaly matches on both, and
        one found just now by replaying an old recording still counts as recent.
        """
        where, args = [], []
        if since_s is not None:
            cutoff = (time.time() if now is None else now) - since_s
            where.append("(ts >= ? OR detected_at >= ?)")
            args += [int(cutoff * 1000), cutoff]
        if kind:
            where.append("kind = ?")
            args.append(kind)
        if symbol:
            where.append("symbol = ?")
            args.append(symbol)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM anomalies"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        try:
            with self._lock:
                rows = self.db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):  # the daemon is creating the store right now
                return []
            raise StoreError(f"cannot read store {str(self.path)!r}: {e}") from None
        except sqlite3.Error as e:
            raise StoreError(f"cannot read store {str(self.path)!r}: {e}") from None
        return [_row(r) for r in rows]

    def purge_anomalies(self, older_than_ms: int) -> int:
        """Delete anomalies whose event time is older than the cutoff (retention)."""
        with self._lock:
            cur = self.db.execute("DELETE FROM anomalies WHERE ts < ?", (older_than_ms,))
            return cur.rowcount


def _create_private(path: Path, mode: int = 0o640) -> None:
    """Create the database file owner-and-group-only before SQLite does (it would follow the
    umask, usually 0644); its -wal and -shm files take the same mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))
    except FileExistsError:
        pass


def _row(r: tuple) -> dict[str, Any]:
    d = dict(zip(_COLUMNS, r))
    d["detail"] = _decode_detail(d["detail"])
    return d
