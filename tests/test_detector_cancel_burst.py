"""cancel_burst on crafted L3 and L2 streams."""

from detectors.cancel_burst import CancelBurst, CancelBurstConfig
from monitor.events import Book, Trade
from monitor.pipeline import Pipeline
from monitor.state import MarketState
from tests.streams import T0, calm_orders


def run(events, **cfg):
    p = Pipeline(MarketState(), [CancelBurst(CancelBurstConfig(**cfg))], tick_ms=250)
    return p.process(events) + p.flush()


def test_fires_on_burst_and_names_the_account():
    """A 15x cancel burst by one account is flagged within its window, attributed to it."""
    out = run(calm_orders(burst=(150, 160)))
    assert out, "no anomaly"
    first = out[0]
    assert first.kind == "cancel_burst" and first.symbol == "BTC-PERP"
    assert T0 + 150_000 <= first.ts <= T0 + 160_000
    assert first.account == "spoofer"
    assert first.detail["top_accounts"][0]["account"] == "spoofer"
    assert first.detail["mode"] == "L3" and first.detail["z"]["cancel_to_trade"] >= 3
    assert all(T0 + 150_000 <= a.ts <= T0 + 162_000 for a in out)  # no flood after it


def test_silent_without_burst():
    """The same calm stream without the burst raises nothing."""
    assert run(calm_orders()) == []


def test_silent_on_benign_3x_surge():
    """Trades, orders and cancels rising together 3x is not a cancel burst."""
    assert run(calm_orders(surge=(150, 180))) == []


def test_silent_during_warm_up():
    """A burst before the baseline is warm raises nothing."""
    assert run(calm_orders(burst=(20, 30), seconds=60)) == []


def test_l2_inferred_cancels_on_public_feeds():
    """Without L3, liquidity pulled from the book and not traded is a burst too."""
    events, seq = [Book(symbol="X", ts=T0, seq=1, snapshot=True,
                        bids=[(100 - 0.01 * k, 50.0) for k in range(1, 20)],
                        asks=[(100 + 0.01 * k, 50.0) for k in range(1, 20)])], 1
    for step in range(240 * 4):
        ts = T0 + step * 250
        burst = 150 * 4 <= step < 158 * 4
        for k in range(1, 4 if not burst else 19):
            seq += 1
            size = 50.0 - (step % 7) - (30.0 if burst else 0.0)
            events.append(Book(symbol="X", ts=ts, seq=seq, bids=[(100 - 0.01 * k, size)]))
            seq += 1
            events.append(Book(symbol="X", ts=ts + 1, seq=seq, bids=[(100 - 0.01 * k, 50.0)]))
        events.append(Trade(symbol="X", ts=ts, price=100.0, size=1.0 + step % 3, side="buy"))
    out = run(events, min_notional=1_000)
    assert out and out[0].detail["mode"] == "L2-inferred"
    assert T0 + 150_000 <= out[0].ts <= T0 + 160_000
