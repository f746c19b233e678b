"""mark_divergence on crafted mark/trade streams."""

import random

from detectors.mark_divergence import MarkDivergence, MarkDivergenceConfig
from monitor.events import Mark, Trade
from monitor.pipeline import Pipeline
from monitor.state import MarketState
from tests.streams import T0

SYM = "ETH-PERP"


def stream(seconds=240, push=None, push_bps=-60.0, basis=None, basis_bps=40.0, surge=None, seed=5, pushes=()):
    """Index a slow random walk around 3000; mark = index + ~0.5 bp; a trade every 250 ms
    within ~2 bps of the mark. ``push`` = (start, end): trades pushed ``push_bps`` from the mark
    (``pushes``: several). ``basis`` = (start, end): the mark ``basis_bps`` off the index while
    trades stay at the index. ``surge`` triples the trades."""
    pushes = list(pushes) + ([push] if push else [])
    rng = random.Random(seed)
    index, ev = 3000.0, []
    for step in range(seconds * 4):
        ts = T0 + step * 250
        t = step / 4
        if step % 4 == 0:
            index *= 1 + rng.gauss(0, 1e-5)
            off = basis_bps if basis and basis[0] <= t < basis[1] else 0.5
            mark = index * (1 + (off + rng.gauss(0, 0.2)) / 1e4)
            ev.append(Mark(symbol=SYM, ts=ts, mark=mark, index=index, funding_rate=0.0001))
        pushed = any(a <= t < b for a, b in pushes)
        ref = index if basis and basis[0] <= t < basis[1] else mark
        for _ in range(3 if surge and surge[0] <= t < surge[1] else 1):
            dev = push_bps if pushed else rng.gauss(0, 2.0)
            ev.append(Trade(symbol=SYM, ts=ts + 1, price=ref * (1 + dev / 1e4), size=1.0, side="sell"))
    return ev


def run(events, **cfg):
    p = Pipeline(MarketState(), [MarkDivergence(MarkDivergenceConfig(**cfg))], tick_ms=250)
    return p.process(events) + p.flush()


def test_last_pushed_away_from_mark_is_a_warning():
    """Trades 60 bps under the mark for 5 s: one warning, with the numbers that crossed."""
    out = run(stream(push=(150, 155)))
    assert len(out) == 1, out
    a = out[0]
    assert a.kind == "mark_divergence" and a.symbol == SYM and a.severity == "warning"
    assert T0 + 150_000 <= a.ts <= T0 + 151_000
    d = a.detail
    assert d["crossed"] == ["last_vs_mark"] and abs(d["features"]["last_vs_mark_bps"] + 60) < 1
    assert abs(d["z"]["last_vs_mark"]) >= d["thresholds"]["last_z"] and d["features"]["last_source"] == "trade"
    assert abs(d["baseline_bps"]["last_vs_mark"]["mean"]) < 2


def test_push_past_critical_bps_is_critical():
    """A push of 150 bps crosses critical_bps."""
    out = run(stream(push=(150, 155), push_bps=-150.0))
    assert [a.severity for a in out] == ["critical"]


def test_basis_alone_is_info():
    """The mark drifting 40 bps off the index while trades stay at the index is info, not a push."""
    out = run(stream(basis=(150, 160)))
    assert out and out[0].severity == "info" and out[0].detail["crossed"] == ["basis"]
    assert all(a.ts < T0 + 161_000 for a in out)


def test_silent_without_divergence():
    """The same stream without the push raises nothing."""
    assert run(stream()) == []


def test_silent_during_warm_up():
    """A push before the warm-up is over raises nothing."""
    assert run(stream(push=(20, 25), seconds=58)) == []


def test_silent_on_benign_3x_surge():
    """Three times the trades around the mark is not a divergence."""
    assert run(stream(surge=(100, 160))) == []


def test_persisting_push_is_one_episode_and_rearms():
    """A push held 60 s is one anomaly; the same push after a clear minute is a new one."""
    out = run(stream(pushes=[(120, 180), (240, 245)], seconds=300))
    assert [round((a.ts - T0) / 1000) for a in out] == [120, 240]


def test_same_stream_same_anomalies():
    """Replaying the stream gives identical anomalies (ids included)."""
    events = stream(push=(150, 155), basis=(200, 210))
    assert run(events) == run(events)
