"""Labelled scenarios through the whole pure pipeline: recall, silence, determinism."""

import msgspec
import pytest

from detectors import build_detectors
from monitor.codecs.native import NativeCodec
from monitor.evaluate import evaluate
from monitor.pipeline import Pipeline
from monitor.simulate.scenarios import build, play
from monitor.state import MarketState


def run(name: str, seconds: float, seed: int = 11):
    market, labels = build(name, seed=seed, seconds=seconds, accounts=1500)
    pipeline, codec = Pipeline(MarketState(), build_detectors({}), tick_ms=250), NativeCodec()
    found = pipeline.run_frames((msgspec.json.encode(e) for e in play(market, seconds)), codec)
    report = evaluate([msgspec.structs.asdict(a) for a in found], labels, pipeline.clock.first, pipeline.clock.now)
    return found, labels, report


@pytest.mark.parametrize("seed", [11, 12])
def test_cancel_burst_is_detected_and_attributed(seed):
    """A labelled cancel burst is found on its symbol, attributed to its account."""
    found, labels, report = run("cancel_burst", 420, seed)
    assert report["per_kind"] == [{"kind": "cancel_burst", "labels": 1, "detected": 1, "recall": 1.0}]
    burst = [a for a in found if a.kind == "cancel_burst"]
    assert burst[0].account == labels[0].account
    assert report["false_alerts"] == 0


def test_benign_surge_raises_nothing():
    """Trades, orders and cancels rising together 3x raise no alert during the surge, and
    nothing a surge could set off (cancel bursts, leverage jumps) anywhere in the run."""
    found, _, report = run("benign_surge", 420)
    assert report["benign_surge_alerts"] == 0
    assert [a for a in found if a.kind in ("cancel_burst", "leverage_jump")] == []


def test_calm_market_stays_quiet():
    """Ten simulated minutes of calm: at most one false alert per hour (here: none)."""
    _, _, report = run("calm", 600)
    assert report["false_alerts"] == 0


def test_same_seed_same_report():
    """The same seed gives the same stream, the same anomalies and the same report."""
    a, b = run("cancel_burst", 400), run("cancel_burst", 400)
    assert a[0] == b[0] and a[2] == b[2]


def test_leverage_jumps_single_and_cohort_are_detected():
    """The single account's jump and the cohort on one symbol are both found."""
    _, labels, report = run("leverage_jump", 720)
    assert report["per_kind"] == [{"kind": "leverage_jump", "labels": 2, "detected": 2, "recall": 1.0}]
    assert report["false_alerts"] <= 1


def test_thin_book_cluster_is_detected():
    """Liquidation prices converging into a thinned band are flagged on that symbol."""
    _, labels, report = run("thin_book_cluster", 600)
    assert report["per_kind"] == [{"kind": "thin_book_cluster", "labels": 1, "detected": 1, "recall": 1.0}]


def test_cascade_is_flagged_before_its_first_forced_liquidation():
    """Both cascade symbols are flagged before the first forced liquidation."""
    _, labels, report = run("cascade", 720)
    assert report["per_kind"] == [{"kind": "cascade", "labels": 2, "detected": 2, "recall": 1.0}]
    assert all(c["lead_s"] is not None and c["lead_s"] > 0 for c in report["cascades"])


def test_an_anomaly_without_a_symbol_in_a_labelled_window_is_a_false_alert():
    """A label on a symbol explains only anomalies on that symbol; one with no symbol in
    its window counts as false, not as nothing."""
    from monitor.simulate.scenarios import Label

    anomalies = [{"kind": "leverage_jump", "symbol": None, "account": "a-1", "ts": 1_500, "id": "1"},
                 {"kind": "cancel_burst", "symbol": "X", "account": None, "ts": 1_600, "id": "2"}]
    r = evaluate(anomalies, [Label(kind="cancel_burst", symbol="X", start_ts=1_000, end_ts=2_000)], 0, 3_600_000)
    assert r["false_alerts"] == 1 and r["false_alert_ids"] == ["1"]


def test_each_label_gets_its_own_verdict():
    """The report's per-label verdicts agree with its counts (the demo's truth table reads them)."""
    found, labels, report = run("cascade", 720)
    verdicts = report["labels"]
    assert [v["kind"] for v in verdicts] == [lb.kind for lb in labels if lb.first_liquidation_ts is not None]
    assert all(v["detected"] and v["lead_s"] == c["lead_s"] for v, c in zip(verdicts, report["cascades"]))
    assert all(v["first_ts"] in {a.ts for a in found} for v in verdicts)
