"""One owner of the SQLite file: one connect helper, one ordered list of migrations, the
schema version in the file; a store written before the list existed is upgraded in place."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from alerts.incidents import IncidentTable
from alerts.outbox import Outbox
from alerts.silence import SilenceTable
from monitor.store import MIGRATIONS, Store, StoreError, connect, schema_version
from tests.support import ROOT

OLD = ROOT / "tests" / "data" / "store_before_migrations.db"  # written by perpwatch at 3054627 (user_version 1)


def tables(path) -> set[str]:
    db = sqlite3.connect(path)
    try:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        db.close()


def test_a_store_written_by_the_previous_code_is_upgraded_in_place(tmp_path):
    path = tmp_path / "pw.db"
    shutil.copy(OLD, path)
    assert schema_version(path) == 1
    # read-only readers (the CLI) read an old store as it is and never migrate it
    assert [a["kind"] for a in Store.reader(path).anomalies()] == ["cancel_burst", "feed_gap"]
    assert schema_version(path) == 1
    Store(path).close()  # the daemon's writer opens it: every later step applied, in order
    assert schema_version(path) == len(MIGRATIONS)
    store = Store.reader(path)
    assert [(a["kind"], a["account"]) for a in store.anomalies()] == [("cancel_burst", "a1"), ("feed_gap", None)]
    assert store.latest_ts() == 1_732_400_001_000 and store.detected_since(1_732_400_000.0) == 2
    ob = Outbox(path)
    assert ob.pending() == 1 and ob.due(now=1_732_400_004.0)[0][1:4] == ("slack", "inc-1", b'{"x":1}')
    ob.mark_expired(ob.due(now=1_732_400_004.0)[0][0], "gave up", now=1_732_400_005.0)  # the column step 3 added
    assert ob.pending() == 0
    incidents = IncidentTable(path, readonly=True)
    assert [i["id"] for i in incidents.list()] == ["inc-1"] and incidents.firing() == 1
    assert [s.symbol for s in SilenceTable(path).all(include_expired=True)] == ["BTC-*"]


def test_any_table_opened_first_creates_the_whole_schema(tmp_path):
    for i, open_first in enumerate((lambda p: SilenceTable(p), lambda p: Outbox(p), lambda p: IncidentTable(p),
                                    lambda p: Store(p))):
        path = tmp_path / f"pw{i}.db"
        open_first(path).db.close()
        assert schema_version(path) == len(MIGRATIONS)
        assert {"anomalies", "outbox", "incidents", "silences"} <= tables(path)


def test_readers_of_a_store_the_daemon_has_not_created_yet_read_empty(tmp_path):
    path = tmp_path / "pw.db"
    sqlite3.connect(path).close()  # an empty file: the daemon is about to create the tables
    assert Store.reader(path).anomalies() == [] and Store.reader(path).latest_ts() is None
    assert IncidentTable(path, readonly=True).firing() == 0 and Outbox(path, readonly=True).pending() == 0


def test_a_store_newer_than_this_code_is_refused_never_written(tmp_path):
    path = tmp_path / "pw.db"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    db.close()
    with pytest.raises(StoreError, match="newer than this perpwatch"):
        connect(path)
    assert schema_version(path) == len(MIGRATIONS) + 1


def test_a_failing_step_leaves_the_previous_version(tmp_path, monkeypatch):
    """Each step is its own transaction: a step that fails rolls back to a consistent version."""
    path = tmp_path / "pw.db"
    shutil.copy(OLD, path)

    def broken(db):
        db.execute("CREATE TABLE half_done (x)")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr("monitor.store.MIGRATIONS", [*MIGRATIONS[:2], broken, *MIGRATIONS[3:]])
    with pytest.raises(StoreError, match="disk I/O error"):
        Store(path)
    assert schema_version(path) == 2 and "half_done" not in tables(path)
