"""The SQLite file: its one connect helper, its ordered migrations, and the anomaly table.

Every table in the file (``anomalies`` here; ``outbox``, ``incidents`` and ``silences`` in
``alerts/``) is opened through ``connect``: WAL mode (readers never block the writer nor
are blocked by it), ``synchronous=NORMAL`` (durable across process crashes), a 5 s busy
timeout, autocommit (each table class runs its own transactions), and the file created
0640 before SQLite would create it with the umask. A writable connection first brings the
file to the newest schema: ``MIGRATIONS`` is one ordered list, and ``PRAGMA user_version``
in the file says how many of them it has; each step runs in its own transaction, so a
store written by an older perpwatch is upgraded in place and a crash mid-upgrade leaves a
consistent version. Read-only connections (the CLI) never migrate: a store of an older
version is read as it is, and a missing table reads as empty (the daemon may be creating
the file right now).

The anomaly store has one writer (the daemon, from a single worker thread so the event
loop never waits on disk) and any number of readers. Anomaly ids are content hashes, so
writing the same anomaly twice (a replay, a restart) is a no-op.

>>> import tempfile, os
>>> from monitor.events import Anomaly
>>> path = os.path.join(tempfile.mkdtemp(), "pw.db")
>>> s = Store(path)
>>> s.write_anomalies([Anomaly.make("feed_gap", 1_732_400_000_000, 2.0, "warning", symbol="X")])
1
>>> [a["kind"] for a in Store.reader(path).anomalies()], schema_version(path) == len(MIGRATIONS)
(['feed_gap'], True)
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import msgspec

from monitor.events import Anomaly


def _add_column(table: str, column: str, decl: str) -> Callable[[sqlite3.Connection], None]:
    """A migration step adding a column (skipped where a store already has it)."""
    def step(db: sqlite3.Connection) -> None:
        if column not in {r[1] for r in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
    return step


# The schema, in order; never edit a released step, append one. Steps 2-5 use IF NOT EXISTS
# and column checks: before this list owned them, each table class created its own table,
# so a store of that time has version 1 and may already hold any of them.
MIGRATIONS: list[str | Callable[[sqlite3.Connection], None]] = [
    # 1: anomalies
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
    # 2: the alert outbox (alerts/outbox.py)
    """
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
    CREATE INDEX IF NOT EXISTS outbox_incident ON outbox (incident_id);
    CREATE UNIQUE INDEX IF NOT EXISTS outbox_one_pending ON outbox (receiver, incident_id) WHERE sent_at IS NULL;
    """,
    # 3: a row given up on (alerts/engine.py's attempt/age policy)
    _add_column("outbox", "expired_at", "REAL"),
    # 4: incidents (alerts/incidents.py)
    """
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
    """,
    # 5: silences (alerts/silence.py)
    """
    CREATE TABLE IF NOT EXISTS silences (
        id TEXT PRIMARY KEY,
        symbol TEXT,
        kind TEXT,
        account TEXT,
        starts_at REAL NOT NULL,
        ends_at REAL NOT NULL,
        comment TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    """,
    # 6: what `perpwatch status` asks of the outbox and incidents without a scan
    """
    CREATE INDEX IF NOT EXISTS incidents_status ON incidents (status);
    """,
]

_MIGRATE_LOCK = threading.Lock()  # table classes of one process open the file one at a time


class StoreError(RuntimeError):
    """The store cannot be opened or read (path, permissions, not a perpwatch store)."""


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the store file (see the module docstring); writable ones are migrated.

    Raises ``StoreError`` naming the path when the file cannot be opened or upgraded."""
    path = Path(path)
    try:
        if readonly:
            return sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=5.0,
                                   isolation_level=None)
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(path)
        db = sqlite3.connect(path, check_same_thread=False, timeout=5.0, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process crashes
        with _MIGRATE_LOCK:
            migrate(db)
        return db
    except sqlite3.Error as e:
        raise StoreError(f"cannot open store {str(path)!r}: {e}") from None
    except OSError as e:
        raise StoreError(f"cannot open store {str(path)!r}: {e.strerror or e}") from None


def migrate(db: sqlite3.Connection) -> int:
    """Apply the steps the file does not have yet, each in its own transaction (the version
    is re-read inside it: two processes opening one file both end at the newest version).
    Returns the version. A file newer than this code is refused (never written)."""
    while True:
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StoreError(f"the store has schema version {version}, newer than this perpwatch "
                                 f"knows ({len(MIGRATIONS)}): upgrade perpwatch")
            if version == len(MIGRATIONS):
                db.execute("COMMIT")
                return version
            step = MIGRATIONS[version]
            if callable(step):
                step(db)
            else:
                for statement in filter(str.strip, step.split(";")):
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={version + 1}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def schema_version(path: str | Path) -> int:
    """The schema version written in a store file (0: not a perpwatch store yet)."""
    db = connect(path, readonly=True)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def count(db: sqlite3.Connection, lock: threading.Lock, sql: str, args: tuple = ()) -> Any:
    """One value of a read query; a table the file does not have yet reads as None."""
    try:
        with lock:
            return db.execute(sql, args).fetchone()[0]
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return None
        raise


_COLUMNS = ("id", "kind", "symbol", "account", "ts", "score", "severity", "detail")
_encode = msgspec.json.Encoder().encode
_decode_detail = msgspec.json.Decoder(dict[str, Any]).decode


class Store:
    """A connection to the store. Writers: one per process; use from one thread."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.db = connect(self.path, readonly=readonly)
        self._lock = threading.Lock()

    @classmethod
    def reader(cls, path: str | Path) -> Store:
        """A read-only connection; never blocks (nor is blocked by) the daemon's writes."""
        if not Path(path).exists():
            raise StoreError(f"no store at {str(path)!r} (has the daemon run with this config?)")
        return cls(path, readonly=True)

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

    @staticmethod
    def _filters(since_s: float | None, kind: str | None, symbol: str | None,
                 now: float | None) -> tuple[str, list[Any]]:
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
        return (" WHERE " + " AND ".join(where)) if where else "", args

    def _read(self, sql: str, args: list[Any]) -> list[tuple]:
        try:
            with self._lock:
                return self.db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):  # the daemon is creating the store right now
                return []
            raise StoreError(f"cannot read store {str(self.path)!r}: {e}") from None
        except sqlite3.Error as e:
            raise StoreError(f"cannot read store {str(self.path)!r}: {e}") from None

    def anomalies(self, *, since_s: float | None = None, kind: str | None = None,
                  symbol: str | None = None, limit: int | None = 100,
                  now: float | None = None) -> list[dict[str, Any]]:
        """Anomalies newest first (by event time), as contract objects.

        ``since_s`` keeps those whose event time *or* detection time is within the last
        ``since_s`` seconds of ``now`` (wall clock): a live anomaly matches on both, and
        one found just now by replaying an old recording still counts as recent.
        """
        where, args = self._filters(since_s, kind, symbol, now)
        sql = f"SELECT {', '.join(_COLUMNS)} FROM anomalies{where} ORDER BY ts DESC, id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [_row(r) for r in self._read(sql, args)]

    def count_anomalies(self, *, since_s: float | None = None, kind: str | None = None,
                        symbol: str | None = None, now: float | None = None) -> int:
        """How many anomalies ``anomalies`` would return without a limit."""
        where, args = self._filters(since_s, kind, symbol, now)
        rows = self._read(f"SELECT count(*) FROM anomalies{where}", args)
        return rows[0][0] if rows else 0

    def by_ids(self, ids: list[str]) -> list[dict[str, Any]]:
        """The stored anomalies with these ids, as contract objects (unknown ids skipped)."""
        out = []
        for k in range(0, len(ids), 500):
            chunk = ids[k:k + 500]
            with self._lock:
                rows = self.db.execute(f"SELECT {', '.join(_COLUMNS)} FROM anomalies WHERE id IN "
                                       f"({', '.join('?' * len(chunk))})", chunk).fetchall()
            out += [_row(r) for r in rows]
        return out

    def detected_since(self, since: float) -> int:
        """How many anomalies were stored at or after wall time ``since`` (for ``status``)."""
        return count(self.db, self._lock, "SELECT count(*) FROM anomalies WHERE detected_at >= ?", (since,)) or 0

    def latest_ts(self) -> int | None:
        """The event time of the newest anomaly (None: none yet)."""
        return count(self.db, self._lock, "SELECT max(ts) FROM anomalies")

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
