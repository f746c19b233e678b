"""End to end: daemon subprocess, a websocket feed and an HTTP receiver on 127.0.0.1."""

import hashlib
import hmac
import json
import signal

import pytest

from tests.support import (T0, TIMEOUT, Collector, ThreadedFeed, frame, perpwatch, run_until, start_daemon,
                           wait_for, write_config)

pytestmark = pytest.mark.e2e
SECRET = "hook-secret-value-123"


def gap_frames(symbols=("BTC-PERP",)) -> list[str]:
    out = []
    for i, s in enumerate(symbols):
        out.append(frame({"type": "book", "symbol": s, "ts": T0 + i, "seq": 1, "snapshot": True,
                          "bids": [[100, 1]], "asks": [[101, 1]]}))
        out.append(frame({"type": "book", "symbol": s, "ts": T0 + 100 + i, "seq": 4, "bids": [[99, 1]]}))
    return out


def alerts_config(url: str, secret: bool = True) -> str:
    return f"""
[[alerts.receivers]]
name = "risk-hook"
kind = "webhook"
url = "{url}"
{'secret_env = "PERPWATCH_HOOK_SECRET"' if secret else ''}

[[alerts.routes]]
receiver = "risk-hook"
min_severity = "info"
group_wait = "0s"
"""


def verify(headers: dict, body: bytes) -> bool:
    sig = headers["X-Perpwatch-Signature"]
    t, v1 = (part.split("=", 1)[1] for part in sig.split(","))
    return hmac.compare_digest(v1, hmac.new(SECRET.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest())


def test_signed_webhook_arrives_with_contract_payload(tmp_path):
    """A feed gap becomes an incident POSTed with the contract payload and a valid signature."""
    with Collector() as hook, ThreadedFeed(gap_frames()) as feed:
        cfg = write_config(tmp_path / "pw.toml", feed.url, tmp_path / "pw.db", alerts_config(hook.url))
        out, err = run_until(cfg, lambda: hook.requests, "a webhook POST", env={"PERPWATCH_HOOK_SECRET": SECRET})
    headers, body, _ = hook.requests[0]
    assert headers["Content-Type"] == "application/json" and verify(headers, body)
    p = json.loads(body)
    assert p["version"] == "1" and p["status"] == "firing" and p["symbols"] == ["BTC-PERP"]
    assert p["anomalies"][0]["kind"] == "feed_gap" and p["anomalies"][0]["ts"] == T0 + 100
    assert SECRET not in out + err and hook.url not in out + err  # secrets never logged
    r = perpwatch("incidents", "--config", str(cfg), "--json")
    [inc] = json.loads(r.stdout)
    assert inc["id"] == p["incident_id"] and inc["symbols"] == ["BTC-PERP"]
    r = perpwatch("incident", inc["id"], "--config", str(cfg), "--json")
    assert json.loads(r.stdout)["timeline"][0]["kind"] == "feed_gap"
    assert perpwatch("incident", inc["id"], "--config", str(cfg)).returncode == 0


def test_receiver_down_then_up_gets_everything(tmp_path):
    """503s, then a 429 with Retry-After, then recovery: every incident still arrives."""
    symbols = ("BTC-PERP", "ETH-PERP", "SOL-PERP")
    with Collector([503, 503, 503, (429, {"Retry-After": "1"})]) as hook, ThreadedFeed(gap_frames(symbols)) as feed:
        cfg = write_config(tmp_path / "pw.toml", feed.url, tmp_path / "pw.db", alerts_config(hook.url, False))
        run_until(cfg, lambda: {s for p in hook.payloads() for s in p["symbols"]} == set(symbols),
                  "every incident after the receiver recovered")
    assert hook.answers[:4] == [503, 503, 503, 429]
    assert len({p["incident_id"] for p in hook.payloads()}) == 3


def test_pending_notifications_survive_sigkill(tmp_path):
    """Killed with SIGKILL while the receiver refuses, restarted: the notification arrives."""
    store = tmp_path / "pw.db"
    with Collector([503] * 1000) as hook, ThreadedFeed(gap_frames()) as feed:
        cfg = write_config(tmp_path / "pw.toml", feed.url, store, alerts_config(hook.url, False))
        proc = start_daemon(cfg)
        wait_for(lambda: len(hook.answers) >= 1, "a first (refused) delivery attempt")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT)
        hook.script.clear()  # the receiver is back
    with Collector() as hook2:
        text = cfg.read_text().replace(hook.url, hook2.url)
        cfg.write_text(text)
        with ThreadedFeed([]) as feed2:
            cfg.write_text(cfg.read_text().replace(feed.url, feed2.url))
            run_until(cfg, lambda: hook2.requests, "the pending notification after restart")
    assert hook2.payloads()[0]["anomalies"][0]["kind"] == "feed_gap"


def test_every_stored_anomaly_reaches_the_receiver_after_a_sigkill(tmp_path):
    """Issue 15: gaps on six symbols (six incidents) while the receiver refuses, SIGKILL with
    all of it pending, a restart with the receiver back: every stored anomaly arrives."""
    from monitor.store import Store

    store = tmp_path / "pw.db"
    symbols = tuple(f"S{i}-PERP" for i in range(6))
    with Collector([503] * 100_000) as hook, ThreadedFeed(gap_frames(symbols)) as feed:
        cfg = write_config(tmp_path / "pw.toml", feed.url, store, alerts_config(hook.url, False))
        proc = start_daemon(cfg)
        wait_for(lambda: store.exists() and len(Store.reader(store).anomalies(kind="feed_gap", limit=None)) == 6
                 and len(hook.answers) >= 6, "six stored gaps and refused deliveries")
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=TIMEOUT)
    stored = {a["id"] for a in Store.reader(store).anomalies(limit=None)}
    with Collector() as hook2, ThreadedFeed([]) as feed2:
        cfg.write_text(cfg.read_text().replace(hook.url, hook2.url).replace(feed.url, feed2.url))
        run_until(cfg, lambda: stored <= {a["id"] for p in hook2.payloads() for a in p["anomalies"]},
                  "every stored anomaly after the restart")


def test_silence_from_cli_mutes_the_running_daemon(tmp_path):
    """`perpwatch silence add` mutes matching incidents; others still arrive."""
    with Collector() as hook, ThreadedFeed(lambda: []) as feed:
        cfg = write_config(tmp_path / "pw.toml", feed.url, tmp_path / "pw.db", alerts_config(hook.url, False))
        r = perpwatch("silence", "add", "--config", str(cfg), "--symbol", "BTC-*", "--kind", "feed_gap",
                      "--for", "1h", "--comment", "venue maintenance")
        assert r.returncode == 0, r.stderr
        sid = r.stdout.strip()
        listed = json.loads(perpwatch("silence", "list", "--config", str(cfg), "--json").stdout)
        assert [s["id"] for s in listed] == [sid] and listed[0]["comment"] == "venue maintenance"
    with Collector() as hook, ThreadedFeed(gap_frames(("BTC-PERP", "ETH-PERP"))) as feed:
        cfg = write_config(tmp_path / "pw.toml", feed.url, tmp_path / "pw.db", alerts_config(hook.url, False))
        run_until(cfg, lambda: hook.requests, "the unsilenced incident")
    assert {s for p in hook.payloads() for s in p["symbols"]} == {"ETH-PERP"}
    assert perpwatch("silence", "expire", sid, "--config", str(cfg)).returncode == 0
    assert perpwatch("silence", "expire", sid, "--config", str(cfg)).returncode == 1


def test_later_notifications_keep_the_incident_id(tmp_path):
    """A second anomaly on the symbol updates the incident: same id, the anomalies so far."""
    frames = gap_frames() + [frame({"type": "book", "symbol": "BTC-PERP", "ts": T0 + 5_000, "seq": 1,
                                    "snapshot": True, "bids": [[100, 1]], "asks": [[101, 1]]}),
                             frame({"type": "book", "symbol": "BTC-PERP", "ts": T0 + 6_000, "seq": 9})]
    with Collector() as hook, ThreadedFeed(frames) as feed:
        extra = alerts_config(hook.url, False).replace('group_wait = "0s"', 'group_wait = "0s"\ngroup_interval = "1s"')
        cfg = write_config(tmp_path / "pw.toml", feed.url, tmp_path / "pw.db", extra)
        run_until(cfg, lambda: any(len(p["anomalies"]) == 2 for p in hook.payloads()), "an update with both gaps")
    ids = {p["incident_id"] for p in hook.payloads()}
    assert len(ids) == 1
    last = hook.payloads()[-1]
    assert [a["ts"] for a in last["anomalies"]] == [T0 + 100, T0 + 6_000]


def test_correlated_symbols_share_one_incident_through_the_daemon(tmp_path):
    """Fifteen minutes of co-moving marks link two symbols in the daemon's exposure graph;
    a gap on each then lands in one incident, the timeline naming the correlation."""
    import math
    import random

    rng, px, frames = random.Random(5), {"BTC-PERP": 60_000.0, "ETH-PERP": 3_000.0}, []
    for s in ("BTC-PERP", "ETH-PERP"):
        frames.append(frame({"type": "book", "symbol": s, "ts": T0, "seq": 1, "snapshot": True,
                             "bids": [[1, 1]], "asks": [[1_000_000, 1]]}))
    for sec in range(900):
        f = rng.gauss(0, 1)
        batch = []
        for s in px:
            px[s] *= math.exp(0.001 * (f + 0.3 * rng.gauss(0, 1)))
            batch.append({"type": "mark", "symbol": s, "ts": T0 + sec * 1000, "mark": px[s], "index": px[s]})
        frames.append(frame(*batch))
    end = T0 + 900_000
    frames += [frame({"type": "book", "symbol": "BTC-PERP", "ts": end, "seq": 5}),
               frame({"type": "book", "symbol": "ETH-PERP", "ts": end + 1_000, "seq": 5}),
               frame({"type": "heartbeat", "ts": end + 2_000})]
    with Collector() as hook, ThreadedFeed(frames) as feed:
        extra = alerts_config(hook.url, False).replace('group_wait = "0s"', 'group_wait = "0s"\ngroup_interval = "1s"')
        cfg = write_config(tmp_path / "pw.toml", feed.url, tmp_path / "pw.db", extra)
        run_until(cfg, lambda: any(p["symbols"] == ["BTC-PERP", "ETH-PERP"] for p in hook.payloads()),
                  "one incident on both symbols")
    assert len({p["incident_id"] for p in hook.payloads()}) == 1
    [inc] = json.loads(perpwatch("incidents", "--config", str(cfg), "--json").stdout)
    timeline = json.loads(perpwatch("incident", inc["id"], "--config", str(cfg), "--json").stdout)["timeline"]
    assert timeline[1]["reason"].startswith("BTC-PERP: returns correlated (rho 0.")


def test_quiet_incident_resolves_on_event_time_in_the_store(tmp_path):
    """An incident quiet for resolve_after of event time (heartbeats keep it moving) is
    stored as resolved, after its notification went out."""
    frames = gap_frames() + [frame({"type": "heartbeat", "ts": T0 + k * 10_000}) for k in range(1, 13)]
    with Collector() as hook, ThreadedFeed(frames) as feed:
        extra = alerts_config(hook.url, False) + '\n[alerts]\nresolve_after = "1m"\n'
        cfg = write_config(tmp_path / "pw.toml", feed.url, tmp_path / "pw.db", extra)
        run_until(cfg, lambda: hook.requests and [i["status"] for i in json.loads(
            perpwatch("incidents", "--config", str(cfg), "--json").stdout)] == ["resolved"],
            "the notification, then the incident stored as resolved")
    assert hook.payloads()[0]["anomalies"][0]["kind"] == "feed_gap"


def test_a_restart_keeps_open_incidents_and_does_not_resend(tmp_path):
    """Stopped and started again mid-incident: the next anomaly on the symbol updates the
    same incident id, and nothing already sent is sent again."""
    first = gap_frames()
    second = [frame({"type": "book", "symbol": "BTC-PERP", "ts": T0 + 5_000, "seq": 1, "snapshot": True,
                     "bids": [[100, 1]], "asks": [[101, 1]]}),
              frame({"type": "book", "symbol": "BTC-PERP", "ts": T0 + 6_000, "seq": 9})]
    with Collector() as hook:
        with ThreadedFeed(first) as feed:
            cfg = write_config(tmp_path / "pw.toml", feed.url, tmp_path / "pw.db", alerts_config(hook.url, False))
            run_until(cfg, lambda: hook.requests, "the first notification")
        with ThreadedFeed(second) as feed2:
            cfg.write_text(cfg.read_text().replace(feed.url, feed2.url))
            run_until(cfg, lambda: any(len(p["anomalies"]) == 2 for p in hook.payloads()), "the update after restart")
    payloads = hook.payloads()
    assert len({p["incident_id"] for p in payloads}) == 1
    assert [len(p["anomalies"]) for p in payloads] == [1, 2]  # no re-send of the first state


@pytest.mark.timeout(600)
def test_replay_gives_the_incidents_and_cascade_risk_the_live_daemon_stored(tmp_path):
    """Correlation is a pipeline stage on event time: the simulator's cascade through the
    live daemon's own path (frames handled as they arrive, flushed to the store by its
    flusher, wall-time guard on) and the same recording through `perpwatch replay` store
    the same anomalies (cascade_risk included) and the same incidents."""
    import asyncio
    import sqlite3

    from monitor.config import load
    from monitor.daemon import Daemon
    from monitor.store import Store

    rec = tmp_path / "cascade.jsonl"
    r = perpwatch("simulate", "--scenario", "cascade", "--speed", "0", "--seconds", "300", "--symbols", "4",
                  "--accounts", "1500", "--record", str(rec), timeout=TIMEOUT * 6)
    assert r.returncode == 0, r.stderr
    live, replayed = tmp_path / "live.db", tmp_path / "replay.db"
    d = Daemon(load(write_config(tmp_path / "live.toml", "ws://127.0.0.1:9/", live)), sinks=[])

    async def serve_live() -> None:
        for i, line in enumerate(rec.read_bytes().splitlines()):
            d._handle_safely("exchange", line)
            if i % 50 == 0:
                await d._flush()
        d.add_anomalies(d.pipeline.flush())
        await d._flush()

    asyncio.run(serve_live())
    d.store.close()
    d.incidents.close()
    rcfg = write_config(tmp_path / "replay.toml", "ws://127.0.0.1:9/", replayed)
    r = perpwatch("replay", str(rec), "--config", str(rcfg), "--json", timeout=TIMEOUT * 6)
    assert r.returncode == 0, r.stderr

    def anomalies(db):
        return sorted((a["id"], a["kind"]) for a in Store.reader(db).anomalies(limit=None))

    def incidents(db):
        return sorted(sqlite3.connect(db).execute("SELECT id, status, symbols, severity, timeline FROM incidents"))

    assert any(k == "cascade_risk" for _, k in anomalies(replayed)), "the scenario should escalate"
    assert anomalies(live) == anomalies(replayed)
    assert incidents(live) == incidents(replayed)
