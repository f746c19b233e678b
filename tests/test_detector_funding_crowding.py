"""funding_crowding on crafted mark streams: funding and realized volatility both extreme."""

import math
import random

from detectors.funding_crowding import FundingCrowding, FundingCrowdingConfig
from monitor.events import Mark
from monitor.pipeline import Pipeline
from monitor.state import MarketState
from tests.streams import T0

SYM = "SOL-PERP"


def stream(seconds=400, funding=None, rate=0.0008, vol=None, vol_x=6.0, marks_per_s=1, seed=9):
    """Marks ``marks_per_s`` a second: a log random walk of 1 bp per sqrt(second) around 150,
    funding 0.0001 (+-0.1 bp). ``funding`` = (start, end): the rate at ``rate``. ``vol`` =
    (start, end): volatility ``vol_x`` times higher."""
    rng = random.Random(seed)
    px, ev = 150.0, []
    dt = 1.0 / marks_per_s
    for step in range(int(seconds * marks_per_s)):
        t = step * dt
        x = vol_x if vol and vol[0] <= t < vol[1] else 1.0
        px *= math.exp(rng.gauss(0, 1e-4 * x * math.sqrt(dt)))
        f = rate if funding and funding[0] <= t < funding[1] else 0.0001 + rng.gauss(0, 1e-6)
        ev.append(Mark(symbol=SYM, ts=T0 + int(t * 1000), mark=px, index=px, funding_rate=f, open_interest=5e5))
    return ev


def run(events, **cfg):
    p = Pipeline(MarketState(), [FundingCrowding(FundingCrowdingConfig(**cfg))], tick_ms=250)
    return p.process(events) + p.flush()


def test_funding_and_volatility_both_extreme():
    """Funding at 8 bps while volatility is 6x its normal: one anomaly, crowded longs, numbers given."""
    out = run(stream(funding=(300, 400), vol=(290, 400)))
    assert len(out) == 1, [(a.ts, a.severity) for a in out]
    a = out[0]
    assert a.kind == "funding_crowding" and a.symbol == SYM and a.severity in ("warning", "critical")
    assert T0 + 300_000 <= a.ts <= T0 + 302_000
    d = a.detail
    assert d["crowded_side"] == "long" and d["features"]["funding_rate"] == 0.0008
    assert d["z"]["funding_rate"] >= 3 and d["z"]["log_realized_vol"] >= 3
    assert d["features"]["realized_vol_bps_per_sqrt_s"] > 2 * d["baseline"]["usual_vol_bps_per_sqrt_s"]


def test_severity_follows_the_rate():
    """Negative funding past critical_funding is critical, crowded shorts."""
    out = run(stream(funding=(300, 400), rate=-0.0015, vol=(290, 400)))
    assert out and out[0].severity == "critical" and out[0].detail["crowded_side"] == "short"


def test_funding_alone_or_volatility_alone_is_silent():
    """Either extreme without the other is not crowding under stress."""
    assert run(stream(funding=(300, 400))) == []
    assert run(stream(vol=(290, 400))) == []


def test_silent_without_anomaly():
    """The calm stream raises nothing."""
    assert run(stream()) == []


def test_silent_during_warm_up():
    """Both extreme before the warm-up is over: silent."""
    assert run(stream(seconds=55, funding=(20, 55), vol=(15, 55))) == []


def test_silent_on_benign_3x_surge():
    """Three times as many marks with the same volatility per second is not volatility."""
    calm = stream(seconds=300)
    surge = [m for m in calm if m.ts < T0 + 150_000] + [
        m for m in stream(seconds=300, marks_per_s=3, seed=4) if T0 + 150_000 <= m.ts < T0 + 210_000] + [
        m for m in calm if m.ts >= T0 + 210_000]
    assert run(surge) == []
