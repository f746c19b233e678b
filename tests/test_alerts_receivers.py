"""Receivers teams already use (issue 15): PagerDuty Events v2 against its documented schema
with a local receiver, and a real Prometheus Alertmanager read back from its own API."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
import urllib.request
from datetime import datetime

import pytest

from alerts.correlate import Correlator
from alerts.engine import AlertEngine
from monitor.config import parse
from monitor.events import Anomaly
from tests.support import T0, Collector

ROUTING_KEY = "R0ut1ngKeyOfThirtyTwoCharacters0"


def anomaly(kind: str, ts: int, severity: str = "warning", symbol: str = "WIF-PERP", account: str | None = None):
    return Anomaly.make(kind, T0 + ts, 5.0, severity, symbol=symbol, account=account, detail={"n": ts})


async def story(engine: AlertEngine, first: list[Anomaly], then: list[Anomaly], seen, escalated, resolved) -> None:
    """Fire and wait until ``seen()``, escalate and wait until ``escalated()``, then resolve
    on event time and wait for ``resolved()``."""
    c = Correlator()
    for batch, done in ((first, seen), (then, escalated)):
        changed = {}
        for a in batch:
            inc, _ = c.add(a, None)
            changed[inc.id] = inc
        await engine.handle(batch, list(changed.values()))
        await until(done, "the notification")
    c.resolve(T0 + 10_000_000)
    await engine.handle([], c.take_closed())
    await until(resolved, "the resolution")


async def until(cond, what: str, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def check_pagerduty_event(e: dict) -> None:
    """The Events API v2 rules (developer.pagerduty.com, "Send an Alert Event")."""
    assert e["routing_key"] == ROUTING_KEY and e["event_action"] in {"trigger", "acknowledge", "resolve"}
    assert isinstance(e["dedup_key"], str) and 0 < len(e["dedup_key"]) <= 255
    if e["event_action"] != "trigger":
        assert set(e) <= {"routing_key", "event_action", "dedup_key"}
        return
    p = e["payload"]
    assert set(p) <= {"summary", "source", "severity", "timestamp", "component", "group", "class", "custom_details"}
    assert 0 < len(p["summary"]) <= 1024 and p["source"] and p["severity"] in {"critical", "error", "warning", "info"}
    datetime.fromisoformat(p["timestamp"].replace("Z", "+00:00"))
    for link in e.get("links", []):
        assert set(link) <= {"href", "text"} and link["href"].startswith("https://")


def test_pagerduty_triggers_then_resolves_one_dedup_key(tmp_path, monkeypatch):
    monkeypatch.setenv("PERPWATCH_TEST_PD_KEY", ROUTING_KEY)
    with Collector() as pd:
        cfg = parse(f'[store]\npath = "{tmp_path / "pw.db"}"\n[[alerts.receivers]]\nname = "pd"\nkind = "pagerduty"\n'
                    f'url = "{pd.url}"\nsecret_env = "PERPWATCH_TEST_PD_KEY"\n[[alerts.routes]]\nreceiver = "pd"\n'
                    'runbook_url = "https://wiki.example/perpwatch"\n')

        async def main():
            engine = AlertEngine(cfg)
            await engine.start()
            await story(engine, [anomaly("leverage_jump", 0, account="a-1")],
                        [anomaly("thin_book_cluster", 1_000, "critical")],
                        lambda: len(pd.requests) >= 1, lambda: len(pd.requests) >= 2,
                        lambda: b'"resolve"' in b"".join(b for _, b, _ in pd.requests))
            await engine.drain(asyncio.get_running_loop().time() + 2)

        asyncio.run(main())
    events = [json.loads(b) for _, b, _ in pd.requests]
    for e in events:
        check_pagerduty_event(e)
    assert [e["event_action"] for e in events][0] == "trigger" and events[-1]["event_action"] == "resolve"
    assert len({e["dedup_key"] for e in events}) == 1
    assert any(e["event_action"] == "trigger" and e["payload"]["severity"] == "critical" for e in events)
    assert events[0]["links"] == [{"href": "https://wiki.example/perpwatch", "text": "runbook"}]


def test_a_pagerduty_receiver_without_a_routing_key_is_refused_naming_the_key(tmp_path):
    from monitor.config import ConfigError

    with pytest.raises(ConfigError) as e:
        parse(f'[store]\npath = "{tmp_path / "pw.db"}"\n[[alerts.receivers]]\nname = "pd"\nkind = "pagerduty"\n'
              'url = "https://events.pagerduty.com/v2/enqueue"\n')
    assert e.value.key == "alerts.receivers[0].secret_env"


AM = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def alertmanager(tmp_path):
    if AM is None:
        pytest.skip("no Alertmanager binary (Debian: apt-get install prometheus-alertmanager; .ci/run does as root)")
    port = free_port()
    conf = tmp_path / "am.yml"
    conf.write_text("route:\n  receiver: blackhole\n  group_by: [incident]\nreceivers:\n  - name: blackhole\n")
    log = tmp_path / "am.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([AM, f"--config.file={conf}", f"--storage.path={tmp_path / 'am-data'}",
                                 f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
                                stdout=subprocess.DEVNULL, stderr=out)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait(10)
            pytest.fail(f"alertmanager did not start: {log.read_text()[-500:]}")
        time.sleep(0.1)
    yield base
    proc.terminate()
    proc.wait(10)


def am_alerts(base: str) -> list[dict]:
    with urllib.request.urlopen(f"{base}/api/v2/alerts", timeout=5) as r:
        return json.loads(r.read())


def test_a_real_alertmanager_gets_the_incident_with_kind_symbol_severity_labels_then_its_end(tmp_path, alertmanager):
    cfg = parse(f'[store]\npath = "{tmp_path / "pw.db"}"\n[[alerts.receivers]]\nname = "am"\nkind = "alertmanager"\n'
                f'url = "{alertmanager}"\n[[alerts.routes]]\nreceiver = "am"\n'
                'runbook_url = "https://wiki.example/perpwatch"\n')
    seen: dict = {}

    def firing(n: int) -> bool:
        got = [a for a in am_alerts(alertmanager) if a["labels"].get("alertname") == "PerpwatchIncident"
               and a["status"]["state"] == "active"]
        seen["firing"] = got
        return len(got) >= n

    async def main():
        engine = AlertEngine(cfg)
        await engine.start()
        await story(engine, [anomaly("leverage_jump", 0, account="a-1")],
                    [anomaly("thin_book_cluster", 1_000, "critical")],
                    lambda: firing(1), lambda: firing(3), lambda: engine.sent >= 3)
        escalated = seen["firing"]
        await until(lambda: not firing(1), "the alerts to end", 30)
        seen["firing"] = escalated
        await engine.drain(asyncio.get_running_loop().time() + 2)
        return engine

    engine = asyncio.run(main())
    assert engine.failed == 0, engine.status()
    labels = sorted((a["labels"]["kind"], a["labels"]["symbol"], a["labels"]["severity"]) for a in seen["firing"])
    assert labels == [("cascade_risk", "WIF-PERP", "critical"), ("leverage_jump", "WIF-PERP", "warning"),
                      ("thin_book_cluster", "WIF-PERP", "critical")]  # cascade_risk: synthesized by the correlator
    a = seen["firing"][0]
    assert a["labels"]["incident"].startswith("inc-") and a["annotations"]["runbook_url"] == "https://wiki.example/perpwatch"


def test_alert_test_sends_a_sample_to_one_receiver_and_exits_1_when_it_fails(tmp_path):
    from tests.support import perpwatch

    with Collector([200, 503]) as hook:
        cfg = tmp_path / "pw.toml"
        cfg.write_text(f'[store]\npath = "{tmp_path / "pw.db"}"\n[[alerts.receivers]]\nname = "hook"\n'
                       f'url = "{hook.url}"\n[[alerts.routes]]\nreceiver = "hook"\n')
        ok = perpwatch("alert", "test", "hook", "--config", str(cfg), "--json")
        down = perpwatch("alert", "test", "hook", "--config", str(cfg))
        unknown = perpwatch("alert", "test", "nope", "--config", str(cfg))
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"receiver": "hook", "outcome": "ok", "error": None}
    sample = json.loads(hook.requests[0][1])
    assert sample["notification"] == "test" and sample["anomalies"][0]["kind"] == "test"
    assert down.returncode == 1 and "HTTP 503" in down.stderr and "Traceback" not in down.stderr
    assert unknown.returncode == 2 and "no receiver named 'nope' (have: hook)" in unknown.stderr
    assert not (tmp_path / "pw.db").exists()  # a test send touches no store
