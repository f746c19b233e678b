"""The README as a new user meets it (issue 17): every command it prints runs as printed in
a fresh copy of the repository's files, the service install it prints fits the unit, and
the interface it links is in the repository."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, TIMEOUT, wait_for

README = (ROOT / "README.md").read_text()

# Commands the README prints that this test does not run, and why; any other command in a
# ```sh block must run as printed (so README and test cannot drift apart).
NOT_RUN = {
    "make demo": "tests/test_simulate.py runs the demo (shorter)",
    "make test": "this is the test suite",
    ".venv/bin/perpwatch run --config config/examples/public-venues.toml":
        "connects to Binance and Bybit; tests stay on 127.0.0.1 (its config is checked by test_config_docs)",
}
SERVICE_INSTALL = "sudo "  # the service install: checked against the unit by test_service_install_fits_the_unit


def sh_commands() -> list[str]:
    """Each command line of the README's ```sh blocks, comments stripped."""
    out = []
    for block in re.findall(r"```sh\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            line = re.split(r"\s+#\s", line, maxsplit=1)[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def fresh_copy(tmp_path: Path) -> Path:
    """The repository's config files in an empty directory, and a ``.venv/bin/perpwatch``
    that is this test run's perpwatch (``make`` puts the real one there)."""
    work = tmp_path / "clone"
    shutil.copytree(ROOT / "config", work / "config")
    bin_dir = work / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    script = bin_dir / "perpwatch"
    script.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m monitor.app.cli \"$@\"\n")
    script.chmod(0o755)
    return work


def split(command: str) -> tuple[dict[str, str], list[str]]:
    """``A=b cmd args`` -> ({"A": "b"}, [cmd, args...])."""
    words = shlex.split(command)
    env = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        k, _, v = words.pop(0).partition("=")
        env[k] = v
    return env, words


def clean_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPWATCH_")}
    env["PYTHONPATH"] = str(ROOT)  # this tree's perpwatch, as the venv's editable install has it
    env.pop("NOTIFY_SOCKET", None)
    return env


@pytest.mark.timeout(int(TIMEOUT * 40))
def test_every_readme_command_runs_as_printed(tmp_path):
    """Each ```sh command of the README, in order, in a fresh copy of the config files with
    no PERPWATCH_* variable set: exit 0 (the daemon: up, then SIGTERM, exit 0). Before:
    check-config exited 2 (PERPWATCH_HOOK_SECRET unset) and `replay recording.jsonl.gz`
    had no recording."""
    work = fresh_copy(tmp_path)
    ran = []
    for command in sh_commands():
        if command in NOT_RUN or command.startswith(SERVICE_INSTALL):
            continue
        extra, argv = split(command)
        assert argv[0] == ".venv/bin/perpwatch", f"README command not run by this test: {command!r}"
        env = {**clean_env(work), **extra}
        if argv[1] == "run":
            code, err = run_daemon_until_ready(argv, env, work, tmp_path)
            assert code == 0, (command, err)
        else:
            r = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=TIMEOUT * 15)
            assert r.returncode == 0, (command, r.stdout[-2000:], r.stderr[-2000:])
            assert "Traceback" not in r.stderr, (command, r.stderr)
            if "--json" in argv and argv[1] == "anomalies":
                rows = json.loads(r.stdout)
                assert rows and {a["kind"] for a in rows} == {"cascade_risk"}, command
        ran.append(argv[1])
    assert {"check-config", "simulate", "replay", "anomalies", "incidents", "evaluate", "run"} <= set(ran), ran


def run_daemon_until_ready(argv: list[str], env: dict, work: Path, tmp_path: Path) -> tuple[int, str]:
    """Start the daemon as printed, wait for its READY=1 (sd_notify), SIGTERM it."""
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(0.2)
        proc = subprocess.Popen(argv, cwd=work, env={**env, "NOTIFY_SOCKET": str(sock_path)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"{argv} exited {proc.returncode}: {proc.communicate()[1][-2000:]}")
                try:
                    return "READY=1" in sock.recv(4096).decode()
                except (socket.timeout, TimeoutError):
                    return False
            wait_for(ready, "the daemon's READY=1")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, err


def test_readme_commands_are_all_accounted_for():
    """Every ```sh command is run by the test above, or listed with the reason it is not."""
    for command in sh_commands():
        if command in NOT_RUN or command.startswith(SERVICE_INSTALL):
            continue
        assert split(command)[1][0] == ".venv/bin/perpwatch", command
    assert set(NOT_RUN) <= set(sh_commands()), "NOT_RUN lists a command the README no longer has"


def test_service_install_fits_the_unit():
    """The README's service install puts a config where the unit reads it, and that config
    reads its secrets from credentials the unit loads (before: the install wrote a
    LoadCredential file but the shipped config read secret_env)."""
    install = [c for c in sh_commands() if c.startswith(SERVICE_INSTALL)]
    unit = (ROOT / "config" / "perpwatch.service").read_text()
    [cfg_install] = [c for c in install if "/etc/perpwatch/perpwatch.toml" in c]
    source = ROOT / shlex.split(cfg_install)[-2]
    assert "--config /etc/perpwatch/perpwatch.toml" in unit
    loaded = dict(re.findall(r"^LoadCredential=([^:\s]+):(\S+)", unit, flags=re.M))
    text = source.read_text()
    refs = re.findall(r'^(?:secret|url)_file\s*=\s*"/run/credentials/perpwatch\.service/([^"]+)"', text, flags=re.M)
    assert refs and set(refs) <= set(loaded), (refs, loaded)
    assert not re.search(r"^(?:secret|url)_env\s*=", text, flags=re.M), "the service reads files, not env"
    for name in refs:  # and the install writes the file each credential is loaded from
        assert any(loaded[name] in c for c in install), (name, loaded[name])
    from monitor.config import load

    assert load(source).store.path.startswith("/var/lib/perpwatch/")  # the unit's StateDirectory


def test_contract_is_in_the_repository():
    """The README links the interface inside the repository (before: ../shared/CONTRACT.md,
    which a clone does not have), and every relative link of the README resolves."""
    links = re.findall(r"\]\(([^)#]+)\)", README)
    local = [x for x in links if "://" not in x]
    assert "docs/CONTRACT.md" in local
    for link in local:
        assert (ROOT / link).resolve().is_relative_to(ROOT), link
        assert (ROOT / link).exists(), link


def test_contract_copy_is_the_shared_contract():
    """docs/CONTRACT.md is the shared contract word for word (when the shared copy is here)."""
    shared = ROOT.parent / "shared" / "CONTRACT.md"
    if not shared.exists():
        pytest.skip(f"no {shared} beside this checkout (a plain clone): nothing to compare")
    assert (ROOT / "docs" / "CONTRACT.md").read_text() == shared.read_text()
