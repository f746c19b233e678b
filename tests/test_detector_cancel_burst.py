"""cancel_burst on crafted L3 and L2 streams."""

import random

from detectors.cancel_burst import CancelBurst, CancelBurstConfig
from monitor.events import Book, Order, Trade
from monitor.pipeline import Pipeline
from monitor.state import MarketState
from monitor.simulate.market import poisson
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


def l2_stream(burst=None, traded_at_level=False, gap_at=None, seconds=240):
    """L2 only: every tick levels dip and are refilled; a trade per tick. ``burst`` = (start, end)
    seconds: the dips are 30 deeper and hit every level. ``traded_at_level``: during the burst
    the dips are trades at those very prices (a taker sweeping), not cancels. ``gap_at``: a
    sequence gap at that second (no snapshot follows)."""
    events, seq = [Book(symbol="X", ts=T0, seq=1, snapshot=True,
                        bids=[(100 - 0.01 * k, 50.0) for k in range(1, 20)],
                        asks=[(100 + 0.01 * k, 50.0) for k in range(1, 20)])], 1
    for step in range(seconds * 4):
        ts = T0 + step * 250
        in_burst = burst is not None and burst[0] * 4 <= step < burst[1] * 4
        if gap_at is not None and step == gap_at * 4:
            seq += 1
        for k in range(1, 4 if not in_burst else 19):
            px = round(100 - 0.01 * k, 2)
            dip = (step % 7) + (30.0 if in_burst else 0.0)
            if in_burst and traded_at_level:
                events.append(Trade(symbol="X", ts=ts, price=px, size=dip, side="sell"))
            seq += 1
            events.append(Book(symbol="X", ts=ts, seq=seq, bids=[(px, 50.0 - dip)]))
            seq += 1
            events.append(Book(symbol="X", ts=ts + 1, seq=seq, bids=[(px, 50.0)]))
        events.append(Trade(symbol="X", ts=ts, price=100.0, size=1.0 + step % 3, side="buy"))
    return events


def test_l2_inferred_cancels_on_public_feeds():
    """Without L3, liquidity pulled from the book and not traded is a burst too (info: inferred)."""
    out = run(l2_stream(burst=(150, 158)), min_notional=1_000)
    assert out and out[0].detail["mode"] == "L2-inferred" and out[0].severity in ("info", "warning")
    assert T0 + 150_000 <= out[0].ts <= T0 + 160_000
    assert "trades at that price" in out[0].detail["note"]


def test_l2_decreases_traded_at_that_price_are_not_cancels():
    """The same dips, each explained by a trade at that level's price, infer no cancels."""
    assert run(l2_stream(burst=(150, 158), traded_at_level=True), min_notional=1_000) == []


def test_l2_silent_while_book_unreliable():
    """After a sequence gap (no snapshot yet) the deltas are not scored at all."""
    assert run(l2_stream(burst=(150, 158), gap_at=140), min_notional=1_000) == []


def account_stream(burst_x=0.0, with_fills=False, seconds=300, seed=3):
    """Calm L3 flow plus one small account "acct-x" cancelling ~1 order (400 notional) per
    second all along; from 250 s to 255 s it cancels ``burst_x`` times as often (fills as
    many when ``with_fills``)."""
    rng = random.Random(seed)
    events = calm_orders(seconds=seconds, seed=seed)
    oid = 10**6
    for step in range(seconds * 20):
        ts = T0 + step * 50
        rate = 0.05 * (burst_x if 250 <= step / 20 < 255 and burst_x else 1.0)
        for _ in range(poisson(rng, rate)):
            oid += 1
            events.append(Order(symbol="BTC-PERP", ts=ts, order_id=oid, account="acct-x", action="new",
                                side="sell", price=100.05, size=4.0))
            events.append(Order(symbol="BTC-PERP", ts=ts, order_id=oid, account="acct-x", action="cancel",
                                side="sell", price=100.05, size=4.0))
            if with_fills:
                events.append(Order(symbol="BTC-PERP", ts=ts, order_id=oid, account="acct-x", action="fill",
                                    side="sell", price=100.05, size=4.0))
    events.sort(key=lambda e: e.ts)
    return events


def test_account_burst_against_its_own_normal():
    """An account cancelling 20x its own normal, without filling, is flagged on its own."""
    out = run(account_stream(burst_x=20.0), z_threshold=50.0, account_min_notional=5_000.0)
    assert out, "no anomaly"
    [a] = out
    assert a.account == "acct-x" and a.detail["scope"] == "account" and a.severity == "warning"
    assert T0 + 250_000 <= a.ts <= T0 + 255_000
    f = a.detail["features"]
    assert f["cancels"] >= 20 and f["cancelled_notional"] >= 5_000 and f["filled_notional"] == 0
    assert a.detail["ratio_to_normal"] >= a.detail["thresholds"]["account_x"]
    assert a.detail["baseline"]["normal_window_notional"] > 0


def test_account_benign_surge_is_silent():
    """The same account tripling its activity, filling as much as it cancels, is not a burst."""
    assert run(account_stream(burst_x=3.0, with_fills=True), z_threshold=50.0, account_min_notional=500.0) == []
    assert run(account_stream(burst_x=20.0, with_fills=True), z_threshold=50.0, account_min_notional=5_000.0) == []


def test_per_account_normals_are_bounded():
    """At most max_accounts normals are kept; the least recently active go first."""
    d = CancelBurst(CancelBurstConfig(max_accounts=3, warmup_ticks=1))
    p = Pipeline(MarketState(), [d], tick_ms=250)
    p.process(calm_orders(seconds=30))
    assert len(d.accounts) == 3 and d.accounts.evicted > 0
