"""Labelled scenarios through the whole pure pipeline: recall, silence, determinism."""

import msgspec
import pytest

from detectors import build_detectors
from monitor.codecs.native import NativeCodec
from monitor.simulate.evaluate import evaluate
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


def test_leverage_jump_single_is_detected():
    """The single account's jump is found; the cohort is labelled as its own kind."""
    _, labels, report = run("leverage_jump", 720)
    rows = {r["kind"]: r for r in report["per_kind"]}
    assert rows["leverage_jump"] == {"kind": "leverage_jump", "labels": 1, "detected": 1, "recall": 1.0}
    assert rows["leverage_cohort"]["labels"] == 1
    assert report["false_alerts"] <= 1


def test_leverage_cohort_is_one_symbol_level_anomaly():
    """40 accounts raising leverage on one symbol within 30 s: one symbol-level anomaly."""
    _, labels, report = run("leverage_jump", 720)
    rows = {r["kind"]: r for r in report["per_kind"]}
    assert rows["leverage_cohort"]["recall"] == 1.0


def test_thin_book_cluster_is_detected():
    """Liquidation prices converging into a thinned band are flagged on that symbol."""
    _, labels, report = run("thin_book_cluster", 600)
    assert report["per_kind"] == [{"kind": "thin_book_cluster", "labels": 1, "detected": 1, "recall": 1.0}]


def test_cascade_is_flagged_before_its_first_forced_liquidation():
    """The cascade (one episode over two symbols) is warned by thin_book_cluster or
    cascade_risk on its symbols between the cluster's formation and the first forced
    liquidation (strict: nothing after it counts)."""
    _, labels, report = run("cascade", 720)
    assert report["per_kind"] == [{"kind": "cascade", "labels": 1, "detected": 1, "recall": 1.0}]
    assert all(c["lead_s"] is not None and c["lead_s"] > 0 for c in report["cascades"])


def test_an_anomaly_without_a_symbol_in_a_labelled_window_is_a_false_alert():
    """A label on a symbol explains only anomalies on that symbol; one with no symbol in
    its window counts as false, not as nothing."""
    from monitor.simulate.scenarios import Label

    anomalies = [{"kind": "leverage_jump", "symbol": None, "account": "a-1", "ts": 201_500, "id": "1"},
                 {"kind": "cancel_burst", "symbol": "X", "account": None, "ts": 201_600, "id": "2"},
                 {"kind": "cancel_burst", "symbol": "X", "account": None, "ts": 1_600, "id": "3"}]
    r = evaluate(anomalies, [Label(kind="cancel_burst", symbol="X", start_ts=201_000, end_ts=202_000)], 0,
                 3_600_000)
    assert r["false_alerts"] == 1 and r["false_alert_ids"] == ["1"]
    assert r["warmup_alerts"] == 1  # the one in the first two minutes is reported apart


def test_each_label_gets_its_own_verdict():
    """The report's per-label verdicts agree with its counts (the demo's truth table reads them)."""
    found, labels, report = run("cascade", 720)
    verdicts = report["labels"]
    assert [v["kind"] for v in verdicts] == [lb.kind for lb in labels if lb.first_liquidation_ts is not None]
    assert all(v["detected"] and v["lead_s"] == c["lead_s"] for v, c in zip(verdicts, report["cascades"]))
    assert all(v["first_ts"] in {a.ts for a in found} for v in verdicts)


def test_strict_cascade_credit_ends_at_the_first_forced_liquidation():
    """Only thin_book_cluster / cascade_risk on the cascade's symbols, from the cluster's
    formation until (not at, not after) its first forced liquidation, warn a cascade; other
    kinds there are explained (not false) but earn nothing."""
    from monitor.simulate.scenarios import Label

    def lb(sym):
        return Label(kind="cascade", symbol=sym, start_ts=200_000, end_ts=500_000, formation_ts=200_000,
                     first_liquidation_ts=400_000, symbols=["X", "Y"], episode=1)

    late = [{"kind": "cascade_risk", "symbol": "X", "account": None, "ts": 400_000, "id": "1"},
            {"kind": "leverage_jump", "symbol": "Y", "account": "a", "ts": 300_000, "id": "2"}]
    r = evaluate(late, [lb("X"), lb("Y")], 0, 3_600_000)
    assert r["per_kind"] == [{"kind": "cascade", "labels": 1, "detected": 0, "recall": 0.0}]
    assert r["false_alerts"] == 0
    early = late + [{"kind": "thin_book_cluster", "symbol": "Y", "account": None, "ts": 250_000, "id": "3"}]
    r = evaluate(early, [lb("X"), lb("Y")], 0, 3_600_000)
    assert r["per_kind"][0]["recall"] == 1.0 and r["median_cascade_lead_s"] == 150.0
    assert [c["symbol_lead_s"] for c in r["cascades"]] == [None, 150.0]
    assert r["max_anomalies_per_episode"] == 1


def test_cohort_counts_only_as_a_symbol_level_anomaly_and_benign_windows_explain_nothing():
    from monitor.simulate.scenarios import Label

    labels = [Label(kind="leverage_cohort", symbol="X", start_ts=200_000, end_ts=260_000),
              Label(kind="calm_burst", symbol="Y", start_ts=400_000, end_ts=420_000)]
    per_account = [{"kind": "leverage_jump", "symbol": "X", "account": f"a{i}", "ts": 210_000 + i, "id": str(i)}
                   for i in range(5)]
    r = evaluate(per_account, labels, 0, 3_600_000)
    assert r["per_kind"][0]["recall"] == 0.0 and r["false_alerts"] == 0
    assert r["episodes"][0]["anomalies"] == {"leverage_jump": 5} and r["max_anomalies_per_episode"] == 5
    cohort = per_account + [{"kind": "leverage_jump", "symbol": "X", "account": None, "ts": 230_000, "id": "c"},
                            {"kind": "cancel_burst", "symbol": "Y", "account": "m", "ts": 410_000, "id": "f1"},
                            {"kind": "cancel_burst", "symbol": "Y", "account": "m", "ts": 415_000, "id": "f2"}]
    r = evaluate(cohort, labels, 0, 3_600_000)
    assert r["per_kind"][0]["recall"] == 1.0
    assert r["false_alerts"] == 2 and r["false_incidents"] == 1 and r["calm_burst_alerts"] == 2


def test_evaluate_without_a_config_runs_the_daemons_pipeline_correlator_included(tmp_path):
    """`perpwatch evaluate` with no --config scores what the daemon would have said: the
    default pipeline with its correlator, so a cascade's cascade_risk is produced and counts."""
    import json

    from tests.support import perpwatch

    rec = tmp_path / "c.jsonl"
    r = perpwatch("simulate", "--scenario", "cascade", "--speed", "0", "--record", str(rec), "--seconds", "400")
    assert r.returncode == 0, r.stderr
    r = perpwatch("evaluate", str(rec), "--labels", f"{rec}.labels.json", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["anomalies_by_kind"].get("cascade_risk", 0) >= 1
    assert {k["kind"]: k["recall"] for k in report["per_kind"]} == {"cascade": 1.0}
