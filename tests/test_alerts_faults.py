"""Alerts under faults (issue 11 rows 5, 6 and 14): a failing or locked store, a hung
receiver beside a healthy one, a restart from an old checkpoint. The engine runs in the
test's event loop against loopback receivers; nothing asserts on wall-clock durations."""

from __future__ import annotations

import asyncio
import json
import pickle
import socket
import sqlite3
from pathlib import Path

import pytest

from alerts.engine import AlertEngine
from monitor.config import parse
from monitor.events import Anomaly
from tests.support import T0, Collector, correlate_and_handle

WAIT_S = 10.0  # bound on waiting for an outcome that, fixed, comes within a second


def config(tmp_path: Path, receivers: list[tuple[str, str, str]], group_wait: str = "0s"):
    """receivers: (name, url, timeout); one route per receiver, each continuing to the next."""
    text = f'[store]\npath = "{tmp_path / "pw.db"}"\n'
    for name, url, timeout in receivers:
        text += f'[[alerts.receivers]]\nname = "{name}"\nurl = "{url}"\ntimeout = "{timeout}"\n'
    for name, _, _ in receivers:
        text += (f'[[alerts.routes]]\nreceiver = "{name}"\nmin_severity = "info"\ngroup_wait = "{group_wait}"\n'
                 'continue = true\n')
    return parse(text)


def gap(symbol: str, ts: int = 0) -> Anomaly:
    return Anomaly.make("feed_gap", T0 + ts, 1.0, "warning", symbol=symbol)


async def until(predicate, what: str, timeout: float = WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def short_busy_timeout(engine: AlertEngine) -> None:
    """A locked store fails in ms instead of the production 5 s busy timeout."""
    for db in (engine.outbox.db,):
        db.execute("PRAGMA busy_timeout = 20")


def test_delivery_survives_a_failing_outbox_query(tmp_path):
    """Row 5: Outbox.due raising 'database is locked' for a while costs iterations, counted
    in errors; the delivery task goes on and later incidents are still delivered."""
    with Collector() as hook:
        async def main():
            engine = AlertEngine(config(tmp_path, [("hook", hook.url, "2s")]))
            await engine.start()
            await correlate_and_handle(engine, [gap("BTC-PERP")])
            await until(lambda: engine.sent == 1, "the first notification")
            real_due, failures = engine.outbox.due, []

            def due(*args, **kwargs):
                if len(failures) < 3:
                    failures.append(1)
                    raise sqlite3.OperationalError("database is locked")
                return real_due(*args, **kwargs)

            engine.outbox.due = due
            await correlate_and_handle(engine, [gap("ETH-PERP")])
            await until(lambda: engine.sent == 2, "the notification after the store recovered")
            errors = engine.status()["errors"]  # the delivery task's or the orphan sweep's query
            assert errors.get("deliver:hook", 0) + errors.get("timers", 0) == 3
            assert any("database is locked" in e for e in engine.status()["last_error"].values())
            await engine.drain(asyncio.get_running_loop().time() + 2)

        asyncio.run(main())
    assert sorted(p["symbols"][0] for p in hook.payloads()) == ["BTC-PERP", "ETH-PERP"]


def test_store_locked_by_another_process_loses_nothing(tmp_path):
    """Row 5 with a real lock: another connection holds the write lock (BEGIN IMMEDIATE)
    from the moment a POST is in flight, so marking it sent fails, and while a new incident
    arrives, so handle() cannot store or queue it. Nothing dies, nothing is lost, and the
    delivered row is not sent again once the lock is released."""
    with Collector() as hook:
        async def main():
            engine = AlertEngine(config(tmp_path, [("hook", hook.url, "2s")]))
            short_busy_timeout(engine)
            other = sqlite3.connect(tmp_path / "pw.db", isolation_level=None)
            notifier = engine.notifiers["hook"]
            real_send = notifier.send

            async def send_then_lock(body):
                result = await real_send(body)
                if not other.in_transaction:
                    other.execute("BEGIN IMMEDIATE")  # locked while the POST was in flight
                return result

            notifier.send = send_then_lock
            await engine.start()
            await correlate_and_handle(engine, [gap("BTC-PERP")])  # queued; its POST ends with the store locked
            await until(lambda: engine.errors["deliver:hook"] >= 2, "failed mark_sent iterations")
            await correlate_and_handle(engine, [gap("ETH-PERP")])  # cannot be stored nor queued under the lock
            assert engine.errors["handle"] >= 1
            await until(lambda: engine.errors["timers"] >= 1, "a failed timer pass")
            notifier.send = real_send
            other.execute("ROLLBACK")  # the other process lets go
            await until(lambda: engine.sent == 2, "the incident that arrived under the lock, delivered")
            await engine.drain(asyncio.get_running_loop().time() + 2)
            other.close()
            return engine

        engine = asyncio.run(main())
    assert [p["symbols"] for p in hook.payloads()] == [["BTC-PERP"], ["ETH-PERP"]]  # each once
    db = sqlite3.connect(tmp_path / "pw.db")
    assert db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0] == 0
    assert engine.sent == 2


class HungReceiver:
    """Accepts TCP connections (the kernel's backlog does) and never answers."""

    def __enter__(self) -> HungReceiver:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"


def test_a_hung_receiver_does_not_delay_a_healthy_one(tmp_path):
    """Row 6: five incidents go to a receiver that never answers (30 s timeout) and to a
    healthy one; the healthy one gets all five while the hung one's first POST is still
    outstanding (nothing delivered to it, nothing failed yet)."""
    symbols = [f"S{i}-PERP" for i in range(5)]
    with HungReceiver() as hung, Collector() as healthy:
        async def main():
            engine = AlertEngine(config(tmp_path, [("hung", hung.url, "30s"), ("healthy", healthy.url, "30s")]))
            await engine.start()
            for i, s in enumerate(symbols):
                await correlate_and_handle(engine, [gap(s, i)])
            await until(lambda: engine.sent == 5, "the healthy receiver's five notifications")
            await until(lambda: engine.status()["pending"] == 5, "the outbox counts refreshed")
            st = engine.status()
            assert st["sent"] == 5 and st["failed"] == 0  # the hung one's rows wait
            await engine.drain(asyncio.get_running_loop().time() + 1)

        asyncio.run(main())
    assert sorted(p["symbols"][0] for p in healthy.payloads()) == symbols


def test_a_row_expires_after_its_attempt_limit(tmp_path):
    """A receiver that keeps failing: the row expires at the attempt limit, counted, with its
    last error; a later state of the incident gets a fresh row."""
    with Collector([503] * 1000) as hook:
        async def main():
            engine = AlertEngine(config(tmp_path, [("hook", hook.url, "2s")]))
            engine.max_attempts = 2
            await engine.start()
            await correlate_and_handle(engine, [gap("BTC-PERP")])
            await until(lambda: engine.expired == 1, "the row expired")
            assert engine.failed == 2
            await until(lambda: engine.status()["pending"] == 0, "the outbox counts refreshed")
            await engine.drain(asyncio.get_running_loop().time() + 1)

        asyncio.run(main())
    db = sqlite3.connect(tmp_path / "pw.db")
    [(expired_at, error)] = db.execute("SELECT expired_at, last_error FROM outbox").fetchall()
    assert expired_at is not None and error.startswith("expired after 2 attempts") and "HTTP 503" in error
    from alerts.outbox import Outbox
    ob = Outbox(tmp_path / "pw.db")
    ob.enqueue("hook", "inc-x", b"later")
    assert ob.pending() == 1


def _daemon_with(cfg, correlator):
    """A daemon whose pipeline holds ``correlator`` (as restored from a checkpoint)."""
    from detectors import build_detectors
    from monitor.daemon import Daemon
    from monitor.pipeline import Pipeline
    from monitor.state import MarketState

    return Daemon(cfg, pipeline=Pipeline(MarketState(), build_detectors({}), correlator=correlator), sinks=[])


def _store_incidents(cfg, incidents) -> None:
    from alerts.incidents import IncidentTable
    t = IncidentTable(cfg.store.path)
    t.upsert(incidents)
    t.close()


def test_restart_from_an_old_checkpoint_abandons_dead_incidents_and_does_not_resend(tmp_path):
    """Row 14: process A checkpoints while its incident waits in group_wait, then sends it and
    opens a second incident, and is killed. Process B restores the checkpoint: the incident
    it holds resumes (still firing, same id) without its already-sent body being queued
    again; the one it does not hold is closed as abandoned (by the daemon, at start), not
    left firing."""
    import time

    from alerts.correlate import Correlator

    cfg = config(tmp_path, [("hook", "http://127.0.0.1:1/hook", "1s")], group_wait="1h")
    later = 2 * 3600.0

    async def process_a() -> bytes:
        c = Correlator()
        a = AlertEngine(cfg)
        _store_incidents(cfg, await correlate_and_handle(a, [gap("BTC-PERP")], c))  # held by group_wait
        checkpoint = pickle.dumps((c, a.snapshot()))
        await a._route(time.time() + later)  # group_wait over: queued
        [row] = a.outbox.due(time.time() + later)
        a.outbox.mark_sent(row[0])  # the receiver got it
        _store_incidents(cfg, await correlate_and_handle(a, [gap("ETH-PERP", 1)], c))  # after the checkpoint
        return checkpoint  # SIGKILL: no drain, no new checkpoint

    async def process_b(checkpoint: bytes) -> AlertEngine:
        c, snap = pickle.loads(checkpoint)
        abandoned = _daemon_with(cfg, c)._abandon_dead_incidents()
        b = AlertEngine(cfg, open_incidents=list(c.open.values()))
        b.restore(snap)
        await b.start()
        await b.handle([], abandoned)  # what the daemon does at start
        await b._route(time.time() + later)
        # the body A already sent is not queued again; the abandoned incident, never sent, is told how it ended
        [(receiver, incident_id, body)] = [r[1:4] for r in b.outbox.due(time.time() + later)]
        assert json.loads(body)["status"] == "resolved" and json.loads(body)["end_reason"] == "abandoned"
        assert json.loads(body)["symbols"] == ["ETH-PERP"] and json.loads(body)["counts_by_kind"] == {"feed_gap": 1}
        await b.drain(asyncio.get_running_loop().time() + 0.5)
        return b

    checkpoint = asyncio.run(process_a())
    asyncio.run(process_b(checkpoint))
    db = sqlite3.connect(tmp_path / "pw.db")
    status = dict(db.execute("SELECT symbols, status FROM incidents").fetchall())
    assert status == {'["BTC-PERP"]': "firing", '["ETH-PERP"]': "abandoned"}
    assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 2


@pytest.mark.parametrize("checkpointed", [True, False])
def test_a_clean_restart_resumes_its_incidents(tmp_path, checkpointed):
    """With a checkpoint holding the incident it stays firing; without one it is abandoned."""
    from alerts.correlate import Correlator

    cfg = config(tmp_path, [("hook", "http://127.0.0.1:1/hook", "1s")], group_wait="1h")
    c = Correlator()
    _store_incidents(cfg, asyncio.run(correlate_and_handle(AlertEngine(cfg), [gap("BTC-PERP")], c)))
    restored = pickle.loads(pickle.dumps(c)) if checkpointed else Correlator()
    _daemon_with(cfg, restored)._abandon_dead_incidents()
    [(status, timeline)] = sqlite3.connect(tmp_path / "pw.db").execute("SELECT status, timeline FROM incidents")
    assert status == ("firing" if checkpointed else "abandoned")
    assert ("abandoned at restart" in timeline) is (not checkpointed)


def test_mark_sent_keeps_a_state_that_replaced_the_row_in_flight(tmp_path):
    """A newer state of the incident replaced the pending payload while the old one was being
    POSTed: marking the old one sent must not swallow the new one (at-least-once)."""
    from alerts.outbox import Outbox
    ob = Outbox(tmp_path / "pw.db")
    ob.enqueue("r", "inc-1", b"v1", now=1.0)
    [row] = ob.due(now=2.0)
    ob.enqueue("r", "inc-1", b"v2", now=3.0)  # while v1 is in flight
    assert ob.mark_sent(row[0], now=4.0, payload=b"v1") is False
    assert [r[3] for r in ob.due(now=5.0)] == [b"v2"]
    assert ob.mark_sent(row[0], now=6.0, payload=b"v2") is True and ob.pending() == 0


def test_drain_lets_a_post_in_flight_finish_instead_of_sending_it_again(tmp_path):
    """SIGTERM while a POST is in flight: the drain waits for its answer (within the deadline)
    and records it, rather than cancelling it and sending the same body a second time."""
    import threading

    with Collector(gate=threading.Event()) as hook:
        async def main():
            engine = AlertEngine(config(tmp_path, [("hook", hook.url, "5s")]))
            await engine.start()
            await correlate_and_handle(engine, [gap("BTC-PERP")])
            await until(lambda: hook.bodies, "the POST in flight")
            loop = asyncio.get_running_loop()
            loop.call_later(0.05, hook.gate.set)  # the receiver answers soon after the stop began
            await engine.drain(loop.time() + 5)
            return engine

        engine = asyncio.run(main())
    assert len(hook.bodies) == 1 and engine.sent == 1
    assert sqlite3.connect(tmp_path / "pw.db").execute(
        "SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0] == 0


def test_status_for_metrics_never_waits_on_the_store(tmp_path):
    """Row 4: /metrics asks status(); with the outbox busy (its lock held by a write that waits
    on a locked database) the answer must not wait for it. Before: the scrape hung."""
    import threading

    engine = AlertEngine(config(tmp_path, [("hook", "http://127.0.0.1:1/hook", "1s")]))
    answered = threading.Event()
    with engine.outbox._lock:  # a write in the store thread holds it while SQLite is locked
        t = threading.Thread(target=lambda: (engine.status(), answered.set()), daemon=True)
        t.start()
        assert answered.wait(WAIT_S), "status() waited on the outbox"
    assert engine.status()["pending"] == 0
