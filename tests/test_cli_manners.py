"""The CLI's manners (issue 17, amtool/promtool as the model): version and -h, a default
config, --json everywhere, ISO 8601, exit codes, read-only commands that never write,
one friendly line for every user mistake, tables that fit 80 columns."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from monitor.events import Anomaly
from monitor.store import Store
from tests.support import T0, perpwatch, write_config

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z")


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return write_config(tmp_path / "pw.toml", "ws://127.0.0.1:1/feed", tmp_path / "var" / "pw.db")


def no_traceback(r) -> None:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr


def test_version_and_short_help():
    """--version prints the version; -h works on the app and on subcommands."""
    r = perpwatch("--version")
    assert r.returncode == 0 and re.match(r"perpwatch \d+\.\d+", r.stdout), r.stdout + r.stderr
    for args in (["-h"], ["anomalies", "-h"], ["silence", "list", "-h"]):
        r = perpwatch(*args)
        assert r.returncode == 0 and "Usage" in r.stdout, (args, r.stderr)


def test_config_from_env_and_default_path(cfg, tmp_path):
    """--config defaults to $PERPWATCH_CONFIG, then /etc/perpwatch/perpwatch.toml (named
    when it is missing, exit 2)."""
    r = perpwatch("anomalies", "--json", env={"PERPWATCH_CONFIG": str(cfg)})
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr
    r = perpwatch("check-config", env={"PERPWATCH_CONFIG": str(cfg)})
    assert r.returncode == 0 and str(cfg) in r.stdout
    if not Path("/etc/perpwatch/perpwatch.toml").exists():
        r = perpwatch("anomalies", env={"PERPWATCH_CONFIG": ""})
        assert r.returncode == 2 and "/etc/perpwatch/perpwatch.toml" in r.stderr and "PERPWATCH_CONFIG" in r.stderr
        no_traceback(r)


def test_read_only_commands_never_create_the_store(cfg, tmp_path):
    """anomalies, incidents, status, silence list/expire and export leave a missing store
    missing (before: `silence list` created it)."""
    store = tmp_path / "var" / "pw.db"
    for args in (["anomalies"], ["incidents"], ["status"], ["silence", "list"], ["silence", "list", "--json"],
                 ["incident", "inc-x"], ["silence", "expire", "abc"], ["export", str(tmp_path / "o.csv"),
                                                                        "--format", "csv"]):
        r = perpwatch(*args, "--config", str(cfg))
        no_traceback(r)
        assert r.returncode in (0, 1), (args, r.stderr)
        assert not store.exists() and not store.parent.exists(), args


def test_silences_refuse_unknown_kinds_and_empty_spans(cfg, tmp_path):
    """--kind must be a known anomaly kind (listed), --for longer than 0s; expire takes
    several ids, exit 1 naming the ones that are not active; --json on add and expire."""
    r = perpwatch("silence", "add", "--config", str(cfg), "--kind", "leverage_jmp", "--for", "1h")
    assert r.returncode == 2 and "leverage_jump" in r.stderr and "leverage_jmp" in r.stderr
    r = perpwatch("silence", "add", "--config", str(cfg), "--kind", "leverage_jump", "--for", "0s")
    assert r.returncode == 2 and "--for" in r.stderr
    ids = []
    for sym in ("A", "B"):
        r = perpwatch("silence", "add", "--config", str(cfg), "--symbol", sym, "--for", "1h", "--json")
        assert r.returncode == 0, r.stderr
        s = json.loads(r.stdout)
        assert ISO.fullmatch(s["ends_at_iso"]) and s["symbol"] == sym
        ids.append(s["id"])
    r = perpwatch("silence", "expire", *ids, "nope", "--config", str(cfg), "--json")
    assert r.returncode == 1 and json.loads(r.stdout) == {"expired": ids, "not_found": ["nope"]}
    r = perpwatch("silence", "list", "--config", str(cfg), "--json")
    assert json.loads(r.stdout) == []


def test_unknown_kind_filter_is_a_usage_error(cfg):
    """`anomalies --kind nonsense` exits 2 with the known kinds (before: exit 0, empty)."""
    r = perpwatch("anomalies", "--config", str(cfg), "--kind", "nonsense")
    assert r.returncode == 2 and "cancel_burst" in r.stderr


def test_status_exits_1_when_the_daemon_is_unreachable(tmp_path):
    """status says the daemon is unreachable and exits 1; no Python None in the table."""
    cfg = write_config(tmp_path / "pw.toml", "ws://127.0.0.1:1/feed", tmp_path / "pw.db",
                       extra="")
    cfg.write_text(cfg.read_text().replace("[metrics]\nenabled = false", '[metrics]\nlisten = "127.0.0.1:1"'))
    Store(tmp_path / "pw.db").close()
    r = perpwatch("status", "--config", str(cfg))
    assert r.returncode == 1 and "unreachable" in r.stdout
    assert "None" not in r.stdout
    r = perpwatch("status", "--config", str(cfg), "--json")
    assert r.returncode == 1 and json.loads(r.stdout)["latest_anomaly_ts"] is None


def test_user_mistakes_are_one_line(cfg, tmp_path):
    """export to a missing directory, run with a store that cannot be created: one line,
    no traceback (before: polars' and pathlib's tracebacks)."""
    r = perpwatch("export", "/nonexistent-dir/out.csv", "--config", str(cfg), "--format", "csv")
    assert r.returncode == 1 and "/nonexistent-dir" in r.stderr
    no_traceback(r)
    (tmp_path / "afile").write_text("x")
    bad = write_config(tmp_path / "bad.toml", "ws://127.0.0.1:1/feed", tmp_path / "afile" / "sub" / "pw.db")
    r = perpwatch("run", "--config", str(bad))
    assert r.returncode == 2 and "store.path" in r.stderr
    no_traceback(r)
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr


def test_json_everywhere_with_iso_times(cfg, tmp_path):
    """check-config, export and incidents print JSON; epoch fields get ISO 8601 twins;
    anomalies --json keeps exactly the contract's fields."""
    Store(tmp_path / "var" / "pw.db").write_anomalies([Anomaly.make("feed_gap", T0, 1.0, "warning", symbol="X")])
    r = perpwatch("check-config", str(cfg), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True
    r = perpwatch("export", str(tmp_path / "a.csv"), "--config", str(cfg), "--format", "csv", "--since", "100000d",
                  "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["anomalies"] == 1
    r = perpwatch("anomalies", "--config", str(cfg), "--json")
    assert set(json.loads(r.stdout)[0]) == {"id", "kind", "symbol", "account", "ts", "score", "severity", "detail"}
    r = perpwatch("anomalies", "--config", str(cfg))
    assert "2024-11-23T22:13:20Z" in r.stdout, r.stdout


def test_tables_fit_80_columns_and_say_the_total(cfg, tmp_path):
    """At 80 columns every line fits, kinds are never wrapped mid-word, the title says
    "3 of 5"; --wide shows the whole detail (before: `leverage_j│ump`, details cut at 90)."""
    long_detail = {f"feature_{i}": i * 1.5 for i in range(20)}
    Store(tmp_path / "var" / "pw.db").write_anomalies([
        Anomaly.make("leverage_jump", T0 + i, 12.5, "critical", symbol="BTC-PERP", account=f"acct-{i:012d}",
                     detail=long_detail) for i in range(5)])
    r = perpwatch("anomalies", "--config", str(cfg), "--limit", "3", env={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    assert "3 of 5 anomalies" in r.stdout
    lines = r.stdout.splitlines()
    assert all(len(ln.rstrip()) <= 80 for ln in lines), "\n".join(lines)
    assert sum("leverage_jump" in ln for ln in lines) == 3
    assert "…" in r.stdout
    r = perpwatch("anomalies", "--config", str(cfg), "--wide", env={"COLUMNS": "80"})
    assert "feature_19=28.5" in r.stdout and "acct-000000000004" in r.stdout


def test_simulate_mistakes_are_one_line_and_json(tmp_path):
    """simulate: a record path in a missing directory, a port in use, a negative speed are
    one line each (before: tracebacks); --json describes the recording."""
    import socket

    r = perpwatch("simulate", "--speed", "0", "--record", "/nonexistent-dir/x.jsonl")
    assert r.returncode == 1 and "/nonexistent-dir" in r.stderr
    no_traceback(r)
    r = perpwatch("simulate", "--speed", "-1")
    assert r.returncode == 2 and "--speed" in r.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = perpwatch("simulate", "--port", str(port), "--seconds", "1", "--symbols", "1", "--accounts", "100")
    assert r.returncode == 1 and f"127.0.0.1:{port}" in r.stderr
    no_traceback(r)
    rec = tmp_path / "r.jsonl"
    r = perpwatch("simulate", "--scenario", "calm", "--seconds", "5", "--symbols", "1", "--accounts", "100",
                  "--speed", "0", "--record", str(rec), "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc["recording"] == str(rec) and doc["frames"] > 1 and ISO.fullmatch(doc["start_ts_iso"])
    assert Path(doc["labels"]).exists()
