"""The notification lifecycle (issue 15): firing -> batched updates -> an escalation at once
-> resolved, and nothing a stored anomaly says lost on the way out, receiver down or not."""

from __future__ import annotations

import asyncio
import json

from alerts.correlate import Correlator
from alerts.engine import AlertEngine
from monitor.config import parse
from monitor.events import Anomaly
from tests.support import T0, Collector


def config(tmp_path, url: str, group_interval: str = "10m", send_resolved: bool = True):
    return parse(f'[store]\npath = "{tmp_path / "pw.db"}"\n[[alerts.receivers]]\nname = "hook"\nurl = "{url}"\n'
                 f'timeout = "2s"\nsend_resolved = {str(send_resolved).lower()}\n'
                 f'[[alerts.routes]]\nreceiver = "hook"\ngroup_wait = "0s"\ngroup_interval = "{group_interval}"\n'
                 'runbook_url = "https://wiki.example/perpwatch"\n')


def a(kind: str, ts: int, severity: str = "warning", symbol: str = "WIF-PERP", account: str | None = None) -> Anomaly:
    return Anomaly.make(kind, T0 + ts, 5.0, severity, symbol=symbol, account=account, detail={"n": ts})


async def until(cond, what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def feed(engine, c: Correlator, anomalies: list[Anomaly], resolve_at: int | None = None) -> list[Anomaly]:
    """The daemon's part: correlate (the correlator may synthesize a cascade_risk), store,
    hand over. Returns every anomaly stored, synthesized ones included."""
    changed, anomalies = {}, list(anomalies)
    for x in list(anomalies):
        inc, extra = c.add(x, None)
        anomalies += extra
        changed[inc.id] = inc
    if resolve_at is not None:
        c.resolve(T0 + resolve_at)
    for inc in c.take_closed():
        changed[inc.id] = inc
    await engine.handle(anomalies, list(changed.values()))
    return anomalies


def bodies(hook: Collector) -> list[dict]:
    return [json.loads(b) for _, b, _ in hook.requests]


def test_an_escalation_goes_at_once_and_plain_updates_wait_for_group_interval(tmp_path):
    with Collector() as hook:
        async def main():
            engine, c = AlertEngine(config(tmp_path, hook.url)), Correlator()
            await engine.start()
            await feed(engine, c, [a("leverage_jump", 0, account="a-1")])
            await until(lambda: len(hook.requests) == 1, "the first notification")
            await feed(engine, c, [a("leverage_jump", 1_000, account="a-2")])  # same kind, same severity
            await feed(engine, c, [a("thin_book_cluster", 2_000, "critical")])  # escalation: new kind, critical
            await until(lambda: len(hook.requests) == 2, "the escalation")
            await engine.drain(asyncio.get_running_loop().time() + 2)

        asyncio.run(main())
    first, second = bodies(hook)
    assert (first["notification"], first["severity"], first["sequence"]) == ("first", "warning", 1)
    assert (second["notification"], second["severity"], second["sequence"]) == ("escalation", "critical", 2)
    assert [x["kind"] for x in second["anomalies"]] == ["leverage_jump", "leverage_jump", "thin_book_cluster",
                                                        "cascade_risk"]  # thin book + leverage jump: synthesized
    assert second["runbook_url"] == "https://wiki.example/perpwatch"


def test_receiver_down_while_the_incident_escalates_and_resolves_gets_all_of_it_after_recovery(tmp_path):
    """The issue's lost update: delivered once as a warning, then the receiver answers 503
    while the incident escalates to critical (thin_book_cluster, cascade_risk) and
    resolves. After recovery the receiver has the resolution carrying every stored anomaly."""
    with Collector() as hook:
        async def main():
            engine, c = AlertEngine(config(tmp_path, hook.url)), Correlator()
            await engine.start()
            stored = await feed(engine, c, [a("leverage_jump", 0, account=f"a-{i}") for i in range(6)])
            await until(lambda: len(hook.requests) == 1, "the first notification")
            hook.script = [503] * 6  # down for the next six attempts
            stored += await feed(engine, c, [a("thin_book_cluster", 10_000 + i, "critical") for i in range(8)])
            await until(lambda: 503 in hook.answers, "a failed attempt at the escalation")
            await feed(engine, c, [], resolve_at=20_000 + 900_001)  # quiet for resolve_after: resolved
            await until(lambda: any(b["status"] == "resolved" for b in bodies(hook)), "the resolution", 60)
            await engine.drain(asyncio.get_running_loop().time() + 2)
            return stored

        stored = asyncio.run(main())
    last = bodies(hook)[-1]
    assert last["status"] == "resolved" and last["notification"] == "resolved" and last["severity"] == "critical"
    assert last["end_reason"] == "resolved" and last["ended_at"].endswith("Z")
    assert {x["id"] for x in last["anomalies"]} == {x.id for x in stored}  # nothing stored is missing
    assert last["counts_by_kind"] == {"cascade_risk": 1, "leverage_jump": 6, "thin_book_cluster": 8}


def test_an_incident_that_ends_before_its_first_send_is_still_said_once(tmp_path):
    """Quiet feed at the end of a stream: an incident that opened and resolved between two
    passes (or before group_wait) reaches the receiver once, as resolved, even with
    send_resolved = false; one already told its final state gets no resolution then."""
    with Collector() as hook:
        async def main():
            engine, c = AlertEngine(config(tmp_path, hook.url, send_resolved=False)), Correlator()
            await engine.start()
            await feed(engine, c, [a("feed_gap", 0, symbol="BTC-PERP")], resolve_at=900_001)
            await until(lambda: len(hook.requests) == 1, "the ended incident")
            await feed(engine, c, [a("feed_gap", 2_000_000, symbol="ETH-PERP")])
            await until(lambda: len(hook.requests) == 2, "the second incident's first notification")
            await feed(engine, c, [], resolve_at=2_000_000 + 900_001)
            await engine.drain(asyncio.get_running_loop().time() + 2)

        asyncio.run(main())
    got = bodies(hook)
    assert [(b["symbols"], b["status"]) for b in got] == [(["BTC-PERP"], "resolved"), (["ETH-PERP"], "firing")]
