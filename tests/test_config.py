"""Configuration: the contract's keys, and every mistake refused with its key, exit 2."""

import pytest

from monitor.config import ConfigError, parse
from tests.support import perpwatch

CONTRACT_EXAMPLE = """
[[sources]]
name = "exchange"
url = "ws://127.0.0.1:9001/feed"
format = "perpwatch"

[store]
path = "/var/lib/perpwatch/perpwatch.db"

[[alerts.receivers]]
name = "risk-hook"
kind = "webhook"
url = "http://127.0.0.1:9002/hook"
secret_env = "PERPWATCH_HOOK_SECRET"

[[alerts.routes]]
receiver = "risk-hook"
min_severity = "info"
group_wait = "0s"
"""


def test_contract_example_parses():
    """The contract's example config is accepted and means what it says."""
    cfg = parse(CONTRACT_EXAMPLE)
    assert cfg.sources[0].url == "ws://127.0.0.1:9001/feed"
    assert cfg.store.path == "/var/lib/perpwatch/perpwatch.db"
    assert cfg.alerts.receivers[0].secret_env == "PERPWATCH_HOOK_SECRET"
    assert cfg.alerts.routes[0].group_wait.seconds == 0


BAD = {
    "unknown top-level key": ("[bogus]\nx = 1\n", "bogus"),
    "unknown source key": ('[[sources]]\nname="a"\nurl="ws://h/"\ncolour="red"\n', "sources[0].colour"),
    "bad source url": ('[[sources]]\nname="a"\nurl="http://h/"\n', "sources[0].url"),
    "url without host": ('[[sources]]\nname="a"\nurl="ws://"\n', "sources[0].url"),
    "bad format": ('[[sources]]\nname="a"\nurl="ws://h/"\nformat="ftx"\n', "sources[0].format"),
    "duplicate source": ('[[sources]]\nname="a"\nurl="ws://h/"\n[[sources]]\nname="a"\nurl="ws://h/"\n',
                         "sources[1].name"),
    "bad duration": ('[daemon]\ntick="fast"\n', "daemon.tick"),
    "bad route duration": ('[[alerts.receivers]]\nname="r"\nurl="http://h/"\n[[alerts.routes]]\n'
                           'receiver="r"\ngroup_wait="5 sec"\n', "alerts.routes[0].group_wait"),
    "missing receiver": ('[[alerts.routes]]\nreceiver="nobody"\n', "alerts.routes[0].receiver"),
    "bad severity": ('[[alerts.receivers]]\nname="r"\nurl="http://h/"\n[[alerts.routes]]\nreceiver="r"\n'
                     'min_severity="fatal"\n', "alerts.routes[0].min_severity"),
    "bad receiver url": ('[[alerts.receivers]]\nname="r"\nurl="gopher://h/"\n', "alerts.receivers[0].url"),
    "receiver without url": ('[[alerts.receivers]]\nname="r"\n', "alerts.receivers[0].url"),
    "wrong type": ('[daemon]\nqueue_frames="many"\n', "daemon.queue_frames"),
    "drain too long": ('[daemon]\ndrain_timeout="30s"\n', "daemon.drain_timeout"),
    "bad detector key": ('[detectors.feed_gap]\nstuck_after="1s"\n', "detectors.feed_gap.stuck_after"),
    "unknown detector": ('[detectors.crystal_ball]\nenabled=true\n', "detectors.crystal_ball"),
    "correlation out of range": ('[alerts.exposure]\nmin_return_corr=1.5\n', "alerts.exposure.min_return_corr"),
    "unknown exposure key": ('[alerts.exposure]\nbeta=1\n', "alerts.exposure.beta"),
    "zero link window": ('[alerts]\nlink_window="0s"\n', "alerts.link_window"),
    "negative detector threshold": ('[detectors.cancel_burst]\nz_threshold=-4\n', "detectors.cancel_burst.z_threshold"),
    "fading out of range": ('[detectors.mark_divergence]\nfading=1.5\n', "detectors.mark_divergence.fading"),
    "unknown kind in a route": ('[[alerts.receivers]]\nname="r"\nurl="http://h/"\n[[alerts.routes]]\nreceiver="r"\n'
                                'kinds=["cancel_bursts"]\n', "alerts.routes[0].kinds[0]"),
    "detector tick disagrees": ('[daemon]\ntick="500ms"\n', "detectors.leverage_jump.tick_ms"),
    "zero retention": ('[store]\npath="x.db"\nretention="0s"\n', "store.retention"),
    "zero receiver timeout": ('[[alerts.receivers]]\nname="r"\nurl="http://h/"\ntimeout="0s"\n',
                              "alerts.receivers[0].timeout"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_config_exits_2_naming_the_key(tmp_path, name):
    """check-config and run refuse a bad config with exit 2 and the key in the message."""
    body, key = BAD[name]
    if "[store]" not in body:
        body = f'[store]\npath = "{tmp_path}/pw.db"\n' + body
    path = tmp_path / "bad.toml"
    path.write_text(body)
    for cmd in (["check-config", str(path)], ["run", "--config", str(path)]):
        r = perpwatch(*cmd)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert key in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_missing_file_and_bad_toml(tmp_path):
    """A missing file or broken TOML is a clean error with exit 2."""
    r = perpwatch("check-config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "cannot read config file" in r.stderr
    (tmp_path / "broken.toml").write_text("[store\n")
    r = perpwatch("check-config", str(tmp_path / "broken.toml"))
    assert r.returncode == 2 and "not valid TOML" in r.stderr


def test_secret_env_must_exist_at_start(tmp_path):
    """A secret named by env var but absent: `run` refuses it (exit 2, the key named);
    check-config warns (exit 0; the service may provide it) and refuses it with --strict."""
    path = tmp_path / "c.toml"
    path.write_text(CONTRACT_EXAMPLE.replace("/var/lib/perpwatch", str(tmp_path)))
    r = perpwatch("run", "--config", str(path), env={"PERPWATCH_HOOK_SECRET": ""})
    assert r.returncode == 2 and "alerts.receivers[0].secret_env" in r.stderr, r.stderr
    r = perpwatch("check-config", str(path), env={"PERPWATCH_HOOK_SECRET": ""})
    assert r.returncode == 0 and "warning" in r.stderr and "alerts.receivers[0].secret_env" in r.stderr
    r = perpwatch("check-config", "--strict", str(path), env={"PERPWATCH_HOOK_SECRET": ""})
    assert r.returncode == 2 and "alerts.receivers[0].secret_env" in r.stderr
    r = perpwatch("check-config", "--strict", str(path), env={"PERPWATCH_HOOK_SECRET": "s3cret-value"})
    assert r.returncode == 0 and "s3cret-value" not in r.stdout + r.stderr


def test_error_type_carries_key():
    """ConfigError exposes the dotted key for programmatic use."""
    with pytest.raises(ConfigError) as e:
        parse('[store]\npath="x"\n[daemon]\ntick="0ms"\n')
    assert e.value.key == "daemon.tick"


def test_url_from_env_is_never_printed_in_a_config_error(tmp_path):
    """A Slack URL from url_env is a credential: a malformed one is refused naming the key,
    without its value (before: the whole URL was printed)."""
    secret = "hooks.slack.com/services/T000/B000/SECRETTOKEN"
    cfg = tmp_path / "pw.toml"
    cfg.write_text(CONTRACT_EXAMPLE.replace('url = "http://127.0.0.1:9002/hook"', 'url_env = "PW_TEST_SLACK_URL"'))
    r = perpwatch("check-config", str(cfg), env={"PW_TEST_SLACK_URL": f"htps://{secret}", "PERPWATCH_HOOK_SECRET": "k"})
    assert r.returncode == 2, r.stderr
    assert "alerts.receivers[0].url" in r.stderr
    assert "SECRETTOKEN" not in r.stderr + r.stdout


def test_every_problem_is_reported_at_once(tmp_path):
    """A file with several mistakes gets them all in one run, one line each, enums with
    their allowed values (before: only the first, and "Invalid enum value")."""
    path = tmp_path / "bad.toml"
    path.write_text(f"""
[store]
path = "{tmp_path}/pw.db"
colour = "red"
[logging]
level = "loud"
[detectors.cancel_burst]
z_threshold = -4
[[alerts.receivers]]
name = "r"
kind = "pager"
url = "http://127.0.0.1:9/"
""")
    for cmd in (["check-config", str(path)], ["run", "--config", str(path)]):
        r = perpwatch(*cmd)
        assert r.returncode == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if "config error" in ln]
        assert any("store.colour: unknown key" in ln for ln in lines), r.stderr
        assert any("logging.level" in ln and "allowed: debug, info, warning, error" in ln for ln in lines), r.stderr
        assert any("alerts.receivers[0].kind" in ln and "webhook, slack, log" in ln for ln in lines), r.stderr
        assert any("detectors.cancel_burst.z_threshold" in ln for ln in lines), r.stderr
    r = perpwatch("check-config", "--json", str(path))
    import json

    doc = json.loads(r.stdout)
    assert r.returncode == 2 and doc["ok"] is False
    assert {"store.colour", "logging.level", "alerts.receivers[0].kind"} <= {e["key"] for e in doc["errors"]}


def test_every_semantic_problem_at_once(tmp_path):
    """Range and cross-field problems are listed together too."""
    path = tmp_path / "bad.toml"
    path.write_text(f'[store]\npath = "{tmp_path}/pw.db"\nretention = "0s"\n[daemon]\ntick = "0ms"\n'
                    '[alerts.exposure]\nmin_return_corr = 2.0\n')
    r = perpwatch("check-config", str(path))
    assert r.returncode == 2
    for key in ("store.retention", "daemon.tick", "alerts.exposure.min_return_corr"):
        assert key in r.stderr, (key, r.stderr)
