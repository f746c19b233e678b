"""Progress on long runs (issue 17): replay, evaluate and `simulate --record` draw a rich
progress bar on stderr when it is a terminal, and nothing when it is not (pipes, CI, cron)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import ROOT, TIMEOUT, perpwatch, write_config


def on_a_terminal(*args: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal: (exit status, stdout, what the terminal got)."""
    master, slave = os.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "100"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "monitor.app.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    with proc.stdout:
        out = proc.stdout.read().decode()
    proc.wait(TIMEOUT * 6)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def test_progress_on_a_terminal_only(tmp_path):
    """simulate --record, replay and evaluate show their progress bar on a terminal (before:
    nothing for minutes); with stderr piped they print no bar."""
    rec = tmp_path / "rec.jsonl"
    small = ("--scenario", "calm", "--seconds", "60", "--symbols", "1", "--accounts", "100", "--speed", "0")
    code, _, tty = on_a_terminal("simulate", *small, "--record", str(rec))
    assert code == 0 and "recording rec.jsonl" in tty and "simulated s" in tty, tty[-500:]
    cfg = write_config(tmp_path / "pw.toml", "ws://127.0.0.1:1/feed", tmp_path / "pw.db")
    code, out, tty = on_a_terminal("replay", str(rec), "--config", str(cfg), "--json")
    assert code == 0 and '"frames"' in out and "replaying rec.jsonl" in tty and "100%" in tty, tty[-500:]
    code, out, tty = on_a_terminal("evaluate", str(rec), "--labels", f"{rec}.labels.json", "--json")
    assert code == 0 and "evaluating rec.jsonl" in tty, tty[-500:]
    r = perpwatch("replay", str(rec), "--config", str(cfg), "--json")
    assert r.returncode == 0 and "replaying" not in r.stderr and "\x1b[" not in r.stderr
    r = perpwatch("simulate", *small, "--record", str(tmp_path / "again.jsonl"))
    assert r.returncode == 0 and "recording again.jsonl" not in r.stderr
