"""Hostile text (issue 11 row 15) and secrets: Slack mrkdwn escaping over arbitrary data, CLI
tables and console logs that show markup and control characters literally, and receiver
URLs never whole in an error message."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sqlite3

import httpx
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from alerts.correlate import Correlator
from alerts.engine import AlertEngine
from alerts.incidents import IncidentTable
from alerts.notify.slack import blocks
from monitor import logs
from monitor.app.cli import app
from monitor.config import parse
from monitor.events import Anomaly
from monitor.store import Store
from tests.support import T0, Collector, correlate_and_handle

EVIL = ["<!channel>", "<https://evil.example|click here>", "a & b <@U123> >", "[bold red]x[/]", "\x1b[2J", "&lt;"]


def texts(obj):
    """Every string under a "text" key of a Slack message."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "text" and isinstance(v, str):
                yield v
            else:
                yield from texts(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from texts(v)


ENTITY = re.compile(r"&(amp|lt|gt);")


def unescaped(text: str) -> bool:
    """True when the text has a raw <, > or an & that does not start one of Slack's entities."""
    return "<" in text or ">" in text or "&" in ENTITY.sub("", text)


data = st.text(min_size=1, max_size=40) | st.sampled_from(EVIL)


@settings(max_examples=200, deadline=None)
@given(symbol=data, account=data, title=data, kind=data, incident_id=data, detail=data)
def test_slack_texts_escape_everything_from_the_data(symbol, account, title, kind, incident_id, detail):
    """Row 15: whatever the symbols, accounts, title, kind, ids and detail values, no text
    of the Slack message holds a raw <, > or & (no @channel ping, no disguised link)."""
    p = {"version": "1", "incident_id": incident_id, "status": "firing", "severity": "warning", "title": title,
         "symbols": [symbol], "accounts": [account],
         "anomalies": [{"id": "x", "kind": kind, "symbol": symbol, "account": account, "ts": T0, "score": 1.5,
                        "severity": "warning", "detail": {"leverage": detail, "ratio": 2.5}}]}
    for t in texts(blocks(p)):
        assert not unescaped(t), t


def test_slack_message_of_a_real_incident_escapes_the_symbol():
    from alerts.dispatch import payload
    c = Correlator()
    inc, _ = c.add(Anomaly.make("feed_gap", T0, 1.0, "warning", symbol="<!channel>"), None)
    message = json.dumps(blocks(json.loads(payload(inc))))
    assert "<!channel>" not in message and "&lt;!channel&gt;" in message


def test_cli_tables_show_markup_and_control_characters_literally(tmp_path):
    """Row 15: a symbol `[bold red]x[/]` prints as itself, `\\x1b[2J` as visible text, in the
    anomalies, incidents and incident views; no raw ESC reaches the terminal."""
    db = tmp_path / "pw.db"
    cfg = tmp_path / "pw.toml"
    cfg.write_text(f'[store]\npath = "{db}"\n')
    store = Store(db)
    store.write_anomalies([Anomaly.make("feed_gap", T0, 1.0, "warning", symbol="[bold red]x[/]", account="\x1b[2J"),
                           Anomaly.make("feed_gap", T0 + 1, 1.0, "warning", symbol="\x1b[2J\x9b31m")])
    store.close()
    c = Correlator()
    inc, _ = c.add(Anomaly.make("feed_gap", T0, 1.0, "warning", symbol="[bold red]x[/]", account="\x1b[2J"), None)
    IncidentTable(db).upsert([inc])
    runner = CliRunner()
    env = {"COLUMNS": "300", "NO_COLOR": "1"}
    outputs = []
    for args in (["anomalies", "--config", str(cfg)], ["incidents", "--config", str(cfg)],
                 ["incident", inc.id, "--config", str(cfg)]):
        r = runner.invoke(app, args, env=env)
        assert r.exit_code == 0, r.output
        outputs.append(r.output)
        assert "[bold red]x[/]" in r.output
        assert "\x1b" not in r.output and "\x9b" not in r.output
    assert "\\x1b[2J" in outputs[0] and "\\x9b31m" in outputs[0]
    assert "\\x1b[2J" in outputs[2]  # the account in the timeline


def test_console_logs_carry_no_control_characters():
    buf = io.StringIO()
    logs.configure("info", "console", buf)
    try:
        structlog.get_logger("t").warning("anomaly\x1b[2J", symbol="\x1b[2J\x9bA\r\nforged=1", n=3)
    finally:
        structlog.reset_defaults()
    line = buf.getvalue()
    assert "\x1b" not in line and "\x9b" not in line and "\r" not in line and line.count("\n") == 1
    assert "\\x1b[2J" in line


SECRET = "s3cr3tT0k3nXYZ"


class Recorder:
    """Stands in for the alert stages' structlog loggers."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict]] = []

    def __getattr__(self, level):
        return lambda event, **kw: self.lines.append((event, kw))


def test_a_failing_slack_receiver_never_shows_its_url(tmp_path, monkeypatch):
    """The Slack URL (from url_env) is the credential: httpx errors that quote it, a notifier
    bug that quotes it, and HTTP errors leave no trace of its path in logs, status() or
    the outbox's last_error."""
    import alerts.deliver
    import alerts.engine
    import monitor.ops.supervise

    rec = Recorder()
    for module in (alerts.engine, alerts.deliver, monitor.ops.supervise):
        monkeypatch.setattr(module, "log", rec)
    with Collector([500] * 1000) as hook:
        url = hook.url.replace("/hook", f"/services/T0AAAA/B0BBBB/{SECRET}")
        monkeypatch.setenv("PERPWATCH_TEST_SLACK_URL", url)
        cfg = parse(f'[store]\npath = "{tmp_path / "pw.db"}"\n[[alerts.receivers]]\nname = "slack"\nkind = "slack"\n'
                    'url_env = "PERPWATCH_TEST_SLACK_URL"\ntimeout = "2s"\nmax_per_second = 1000\n'
                    '[[alerts.routes]]\nreceiver = "slack"\ngroup_wait = "0s"\n')

        async def main():
            engine = AlertEngine(cfg)
            notifier = engine.notifiers["slack"]
            real_post, real_send, calls = notifier.client.post, notifier.send, []

            async def post(u, **kw):
                calls.append(u)
                if len(calls) == 1:
                    raise httpx.ConnectError(f"connection to {u} failed")
                return await real_post(u, **kw)

            async def send(body):
                if len(calls) == 1:
                    calls.append("bug")
                    raise RuntimeError(f"notifier bug while posting to {url} ({SECRET})")
                return await real_send(body)

            notifier.client.post = post
            notifier.send = send
            engine.max_attempts = 4
            await engine.start()
            await correlate_and_handle(engine, [Anomaly.make("feed_gap", T0, 1.0, "warning", symbol="BTC-PERP")])
            await asyncio.wait_for(_until(lambda: engine.expired == 1), 10)
            status = engine.status()
            await engine.drain(asyncio.get_running_loop().time() + 1)
            return status

        status = asyncio.run(main())
    assert status["errors"]["deliver:slack"] >= 1 and status["failed"] == 4
    errors = [r[1].get("error", "") for r in rec.lines]
    assert any("ConnectError" in e for e in errors) and any("RuntimeError" in e for e in errors)
    last_errors = [r[0] for r in sqlite3.connect(tmp_path / "pw.db").execute("SELECT last_error FROM outbox")]
    everything = repr(rec.lines) + repr(status) + repr(last_errors)
    assert SECRET not in everything and "/services/T0AAAA" not in everything
    assert "http://127.0.0.1:" in everything  # scheme://host is kept for diagnosis


async def _until(predicate) -> None:
    while not predicate():
        await asyncio.sleep(0.02)
