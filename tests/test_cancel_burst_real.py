"""cancel_burst on real Binance USD-M traffic (ETHUSDT) with planted, labelled pulls.

The excerpt in ``tests/data`` (the first 100 s of the hftbacktest recording, see its README)
always runs; the whole recording (5.75 min, ``../shared/data/real``) when it is present. A
bid of 2x, 5x or 20x the depth resting within 10 bps of the best bid is placed 3 bps under
it and pulled one second later (``tests.planted``). Measured at the commit that added this
file: every such pull is flagged 0.1-0.2 s after it (the level rule; the cancel-to-trade z
hardly moves: the venue cancels ~300x what it trades); 1x is not (``pull_depth_x`` 1.5), so
the smallest size caught is 2x; the real minutes alone raise nothing.
"""

from __future__ import annotations

import pytest

from tests.planted import EXCERPT, FULL, event_ms, plant_pull, read_hftbacktest, replay


@pytest.fixture(scope="module")
def excerpt() -> list[dict]:
    return read_hftbacktest(EXCERPT)


def caught(out: list, plant) -> list:
    """The anomalies that flag this plant: on its symbol, within a second of the pull, naming its price."""
    return [a for a in out if a.kind == "cancel_burst" and plant.pull_ts <= a.ts <= plant.pull_ts + 1_000
            and (a.detail["pulled_near_touch"] or {}).get("price") == plant.price]


def test_the_real_minutes_alone_raise_nothing(excerpt):
    """The calm real excerpt (cancels ~300x trades, churn near the touch ~2x its depth every
    2 s) raises no cancel_burst."""
    out, pipe = replay(excerpt)
    assert pipe.counts["Book"] > 1_500 and pipe.counts["Trade"] > 3_000
    assert out == []


@pytest.mark.parametrize("x_depth", [2.0, 5.0, 20.0])
def test_a_planted_pull_is_caught(excerpt, x_depth):
    """A bid of x_depth times the near-touch depth, pulled a second after it was placed, is one
    anomaly within a second of the pull, and says where and how much."""
    msgs, plant = plant_pull(excerpt, event_ms(excerpt[0]) + 70_000, x_depth)
    assert plant.trades_through == 0 and plant.notional > 1_000_000
    out, _ = replay(msgs)
    assert len(out) == 1 and caught(out, plant) == out, [(a.ts - plant.pull_ts, a.detail) for a in out]
    lv = out[0].detail["pulled_near_touch"]
    assert lv["side"] == "bid" and lv["ratio_to_depth"] >= 1.5 and abs(lv["lump"] - plant.notional) < 0.05 * plant.notional
    assert out[0].detail["mode"] == "L2-inferred" and "level" in out[0].detail["trigger"]
    assert out[0].severity in ("warning", "critical")


@pytest.mark.skipif(not FULL.exists(), reason="the full recording lives in ../shared/data/real")
def test_planted_pulls_across_the_whole_recording():
    """Over the 5.75 real minutes: silent alone; five 2x pulls a minute apart are five
    anomalies, each within a second of its pull (an episode does not swallow the next)."""
    msgs = read_hftbacktest(FULL)
    out, _ = replay(msgs)
    assert out == []
    t0, plants = event_ms(msgs[0]), []
    for at_s in (90, 150, 210, 270, 330):
        msgs, plant = plant_pull(msgs, t0 + at_s * 1_000, 2.0)
        plants.append(plant)
    out, _ = replay(msgs)
    assert [len(caught(out, p)) for p in plants] == [1] * 5 and len(out) == 5
