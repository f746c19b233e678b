"""The simulator: deterministic, valid, uncrossed, with gaps only when asked; served over ws."""

import asyncio
import json
import re

import msgspec
from websockets.asyncio.client import connect

from detectors import build_detectors
from monitor.codecs.native import NativeCodec
from monitor.pipeline import Pipeline
from monitor.simulate.market import Market
from monitor.simulate.server import FeedServer
from monitor.state import MarketState
from tests.support import T0, TIMEOUT, perpwatch


def replay(market: Market, seconds: float):
    codec, pipeline = NativeCodec(), Pipeline(MarketState(), build_detectors({}), tick_ms=250)
    anomalies = pipeline.process(codec.decode(msgspec.json.encode(market.snapshots())))
    for events in market.run(seconds):
        anomalies += pipeline.process(codec.decode(msgspec.json.encode(events)))
        assert not any(b.is_crossed() for b in pipeline.state.books.values())
    return codec, pipeline, anomalies + pipeline.flush()


def test_same_seed_same_stream():
    """The same seed gives the identical event stream; another seed does not."""
    a = [e for evs in Market(seed=5, start_ts=T0).run(20) for e in evs]
    b = [e for evs in Market(seed=5, start_ts=T0).run(20) for e in evs]
    c = [e for evs in Market(seed=6, start_ts=T0).run(20) for e in evs]
    assert a == b and a != c


def test_stream_is_valid_believable_and_never_crossed():
    """Every event decodes cleanly; all types occur; rates are those of a calm market."""
    m = Market(seed=3, start_ts=T0, gap_every_s=0)
    codec, pipeline, anomalies = replay(m, 60)
    assert not codec.stats.dropped and not codec.stats.unknown
    counts = pipeline.counts
    assert set(counts) == {"Book", "Order", "Trade", "Mark", "Position", "Account"}
    assert 200 <= sum(counts.values()) / 60 <= 5000
    assert counts["Mark"] == 6 * 61  # once a second, from the start
    assert len(pipeline.state.accounts) > 2500  # the accounts' first positions went out
    assert anomalies == []  # no gaps asked for, none raised


def test_gaps_when_enabled_and_snapshot_follows():
    """Dropped book messages show up as feed_gaps, and every gapped book resyncs."""
    m = Market(seed=4, start_ts=T0, gap_every_s=5)
    _, pipeline, anomalies = replay(m, 60)
    gaps = [a for a in anomalies if a.kind == "feed_gap" and a.severity == "warning"]
    assert m.dropped >= 3 and len(gaps) == m.dropped
    m.gap_every_s = 0  # no new gaps: the last one's snapshot arrives within 2 s
    list(m.run(3))
    assert all(not s.resync_at for s in m.symbols)


def test_server_sends_snapshots_then_event_arrays():
    """A real websocket client gets one snapshot frame, then arrays of events."""

    async def main():
        server = FeedServer(Market(seed=1, start_ts=T0), speed=50)
        await server.start()
        try:
            async with connect(server.url) as ws:
                first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                assert {e["type"] for e in first} == {"book"} and all(e["snapshot"] for e in first)
                nxt = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                assert isinstance(nxt, list) and all("ts" in e for e in nxt)
        finally:
            await server.stop()

    asyncio.run(main())


def test_demo_runs_and_stops_cleanly(tmp_path):
    """`perpwatch demo` runs the simulator and the daemon, stores anomalies, exits 0."""
    r = perpwatch("demo", "--duration", "8", "--speed", "60", "--scenario", "cancel_burst", "--accounts", "300",
                  "--symbols", "2",
                  "--dir", str(tmp_path), timeout=TIMEOUT * 3)
    assert r.returncode == 0, r.stderr
    assert "demo summary" in r.stdout
    heard = re.search(r"(\d+) POSTs, (\d+) signatures[\s│]+verified, (\d+) rejected", r.stdout)
    assert heard and int(heard[2]) >= 1 and heard[2] == heard[1] and heard[3] == "0", r.stdout
    assert re.search(r"cancel_burst by \S+\s+│\s+ETH-PERP\s+│\s+yes", r.stdout), r.stdout
    incidents = json.loads(perpwatch("incidents", "--config", str(tmp_path / "demo.toml"), "--json").stdout)
    assert any("cancel_burst" in i["title"] for i in incidents)
    q = perpwatch("anomalies", "--config", str(tmp_path / "demo.toml"), "--json", "--kind", "cancel_burst")
    assert q.returncode == 0 and json.loads(q.stdout), (q.stderr, r.stdout)


def test_demo_receiver_checks_signatures_and_keeps_latest_state():
    """The demo's webhook receiver accepts only bodies signed with the shared secret and
    keeps each incident's latest payload."""
    from alerts.notify.webhook import sign
    from monitor.simulate.receiver import WebhookReceiver

    rx = WebhookReceiver(b"k", keep=1)
    body = json.dumps({"incident_id": "inc-1", "severity": "warning"}).encode()
    assert rx.receive(sign(b"k", body, 1_700_000_000), body) == 200
    assert rx.receive(sign(b"other", body, 1_700_000_000), body) == 400
    assert rx.receive(None, body) == 400 and rx.receive("t=1,v1=00", b"not json") == 400
    later = json.dumps({"incident_id": "inc-1", "severity": "critical"}).encode()
    assert rx.receive(sign(b"k", later, 1_700_000_001), later) == 200
    assert rx.incidents["inc-1"].payload["severity"] == "critical" and rx.incidents["inc-1"].posts == 2
    other = json.dumps({"incident_id": "inc-2"}).encode()
    rx.receive(sign(b"k", other, 1), other)
    assert list(rx.incidents) == ["inc-2"]  # bounded: the oldest heard-of went
    assert (rx.posts, rx.verified, rx.rejected) == (6, 3, 3)


def test_stress_episodes_end():
    """A cascade is an episode: at its end the thinned book and the pushed prices are released,
    and its accounts still open de-lever; a levered-up account goes back to what it held."""
    from monitor.simulate.scenarios import HOLD_MS, LeverageJump, LiquidationCluster, build

    m, labels = build("cascade", seed=3, seconds=720, accounts=400)
    cluster = next(a for a in m.actors if isinstance(a, LiquidationCluster))
    first, second = m.by_name[cluster.symbol], m.by_name[cluster.second]
    end_s = (cluster.end - m.ts) / 1000
    for _ in m.run(end_s - 30):
        pass
    assert first.thin < 1.0 and second.drift_per_s < 0  # mid-episode: thin book, forced selling
    for _ in m.run(30 + cluster.UNWIND_MS / 1000 + 1):
        pass
    assert first.thin == 1.0 and first.drift_per_s == 0.0 and second.drift_per_s == 0.0
    levered = [a.name for a in m.accounts if a.positions.get(cluster.symbol, (0, 0, 0))[2] > 25]  # ~40x
    assert levered == [] and cluster.open == {} and cluster.unwind == []
    assert labels[0].first_liquidation_ts is not None

    m, labels = build("leverage_jump", seed=3, seconds=720, accounts=400)
    jump = next(a for a in m.actors if isinstance(a, LeverageJump))
    acct = next(a for a in m.accounts if a.name == jump.account)
    for _ in m.run((jump.start - m.ts) / 1000 + 1):
        pass
    assert acct.positions[jump.symbol][2] == jump.leverage
    for _ in m.run(HOLD_MS / 1000):
        pass
    assert jump.restored and acct.positions.get(jump.symbol) == jump.before
