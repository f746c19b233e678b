"""The store and the pure pipeline: batches, queries, idempotence, determinism."""

import pickle

from detectors import build_detectors
from monitor.codecs.native import NativeCodec
from monitor.events import Anomaly, Book, Heartbeat
from monitor.pipeline import Pipeline
from monitor.state import MarketState
from monitor.store import Store
from tests.support import T0


def gap_stream():
    return [
        Book(symbol="A", ts=T0, seq=1, snapshot=True, bids=[(10.0, 1.0)], asks=[(11.0, 1.0)]),
        Book(symbol="B", ts=T0 + 10, seq=1, snapshot=True, bids=[(10.0, 1.0)], asks=[(11.0, 1.0)]),
        Book(symbol="A", ts=T0 + 100, seq=2, bids=[(10.0, 2.0)]),
        Book(symbol="A", ts=T0 + 400, seq=9, bids=[(10.0, 3.0)]),
        Heartbeat(ts=T0 + 40_000),
        Book(symbol="A", ts=T0 + 41_000, seq=1, snapshot=True, bids=[(10.0, 1.0)]),
    ]


def run(events):
    p = Pipeline(MarketState(), build_detectors({}), tick_ms=250)
    return p.process(events) + p.flush()


def test_gap_then_stuck_resync():
    """A gap raises a warning; no snapshot for stuck_after_ms raises a critical one."""
    out = run(gap_stream())
    assert [(a.kind, a.severity, a.symbol) for a in out] == [
        ("feed_gap", "warning", "A"), ("feed_gap", "critical", "A")]
    assert out[0].detail["expected_seq"] == 3 and out[0].detail["got_seq"] == 9
    assert out[0].ts == T0 + 400


def test_replay_is_deterministic():
    """The same stream gives identical anomalies, ids included."""
    assert run(gap_stream()) == run(gap_stream())


def test_flush_reports_gap_in_last_message():
    """A gap in the stream's last message is reported by flush(), with its event time."""
    p = Pipeline(MarketState(), build_detectors({}), tick_ms=250)
    events = gap_stream()[:3] + [Book(symbol="A", ts=T0 + 200, seq=9)]  # before the first tick
    assert p.process(events) == []
    [a] = p.flush()
    assert a.ts == T0 + 200


def test_checkpoint_round_trip_resumes():
    """A pickled pipeline resumes with the same state and gives the same later anomalies."""
    events = gap_stream()
    p = Pipeline(MarketState(), build_detectors({}), tick_ms=250)
    p.process(events[:4])
    q = Pipeline.restore(pickle.loads(pickle.dumps(p.checkpoint())))
    assert q.process(events[4:]) == p.process(events[4:])


def test_symbol_flood_is_bounded():
    """A feed inventing symbols is refused beyond max_symbols, and counted."""
    p = Pipeline(MarketState(max_symbols=3), [], tick_ms=250)
    codec = NativeCodec()
    frame = "[" + ",".join(
        f'{{"type":"trade","symbol":"S{i}","ts":{T0 + i},"price":1,"size":1,"side":"buy"}}' for i in range(50)) + "]"
    p.process(codec.decode(frame))
    assert len(p.state.marks) == 3 and p.refused == 47


def test_store_batches_queries_and_is_idempotent(tmp_path):
    """Writes are idempotent by id; queries filter and sort newest first."""
    s = Store(tmp_path / "pw.db")
    batch = [Anomaly.make("feed_gap", T0 + i * 1000, i, "warning", symbol="A" if i % 2 else "B",
                          detail={"i": i}) for i in range(10)]
    assert s.write_anomalies(batch, detected_at=0) == 10
    assert s.write_anomalies(batch, detected_at=0) == 0
    r = Store.reader(tmp_path / "pw.db")
    rows = r.anomalies(limit=None)
    assert [row["ts"] for row in rows] == sorted((a.ts for a in batch), reverse=True)
    assert set(rows[0]) == {"id", "kind", "symbol", "account", "ts", "score", "severity", "detail"}
    assert [row["symbol"] for row in r.anomalies(symbol="A")] == ["A"] * 5
    assert r.anomalies(kind="cancel_burst") == []
    assert len(r.anomalies(limit=3)) == 3
    # --since: event time or detection time within the window
    now = (T0 + 9_500) / 1000
    assert {row["ts"] for row in r.anomalies(since_s=2.0, now=now)} == {T0 + 8000, T0 + 9000}
    assert s.purge_anomalies(T0 + 5000) == 5
    assert len(r.anomalies(limit=None)) == 5
