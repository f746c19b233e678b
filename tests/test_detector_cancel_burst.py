"""cancel_burst on crafted L3 and L2 streams."""

import math
import random

from detectors.base import DetectorConfigError, build_config
from detectors.cancel_burst import CancelBurst, CancelBurstConfig
from monitor.events import Book, Order, Trade
from monitor.pipeline import Pipeline
from monitor.simulate.market import poisson
from monitor.state import MarketState
from tests.streams import T0, calm_orders


def run(events, **cfg):
    p = Pipeline(MarketState(), [CancelBurst(CancelBurstConfig(**cfg))], tick_ms=250)
    return p.process(events) + p.flush()


def test_fires_on_burst_and_names_the_account():
    """A 15x cancel burst by one account is flagged within its window, attributed to it; the
    symbol's anomaly lists the account at the top of its detail."""
    out = run(calm_orders(burst=(150, 160)))
    assert out, "no anomaly"
    first = out[0]
    assert first.kind == "cancel_burst" and first.symbol == "BTC-PERP" and first.account == "spoofer"
    assert T0 + 150_000 <= first.ts <= T0 + 151_000
    sym = [a for a in out if a.detail["scope"] == "symbol"]
    assert sym and sym[0].account == "spoofer" and sym[0].ts <= T0 + 152_000
    assert sym[0].detail["top_accounts"][0]["account"] == "spoofer"
    assert sym[0].detail["top_accounts"][0]["cancels"] >= 20
    assert sym[0].detail["mode"] == "L3" and sym[0].detail["z"]["cancel_to_trade"] >= 3
    assert all(T0 + 150_000 <= a.ts <= T0 + 162_000 for a in out)  # no flood after it


def test_one_anomaly_per_episode_however_the_burst_builds():
    """While a burst builds its figures double tick by tick; that alone re-fires nothing: at
    most the account's own anomaly (before the symbol crossed) and the symbol's, and the
    symbol's again only when its severity rises."""
    for burst_x in (15.0, 40.0, 100.0):
        out = run(calm_orders(burst=(150, 160), burst_x=burst_x))
        scopes = [a.detail["scope"] for a in out]
        assert 1 <= len(out) <= 3 and scopes.count("account") <= 1, (burst_x, scopes)
        sym = [a for a in out if a.detail["scope"] == "symbol"]
        assert [a.severity for a in sym] == sorted({a.severity for a in sym}, key=["warning", "critical"].index)


def test_account_acting_alone_fires_once_per_episode():
    """An account with no history bursting while its symbol stays quiet (its thresholds out of
    reach): one anomaly, not one each time its unbounded ratio doubles."""
    out = run(calm_orders(burst=(150, 160)), z_threshold=50.0)
    assert [(a.account, a.detail["scope"]) for a in out] == [("spoofer", "account")]


def whale_stream():
    """Calm L3 flow; at 150 s account "whale" cancels one 20,000 order at the touch (2M
    notional, far more than rests within 10 bps), then keeps cancelling small orders (30/s,
    2,000 each) for five seconds while others trade as much (the cancel-to-trade ratio of
    the symbol stays normal once the large pull has left the window)."""
    events = calm_orders(seconds=240)
    oid = 10**7
    for step in range(100):
        ts = T0 + 150_000 + step * 50
        for k in range(2 if step % 2 else 1):
            oid += 1
            size = 20_000.0 if step == 0 and k == 0 else 20.0
            events += [Order(symbol="BTC-PERP", ts=ts, order_id=oid, account="whale", action=a, side="buy",
                             price=99.99, size=size) for a in ("new", "cancel")]
        events.append(Trade(symbol="BTC-PERP", ts=ts, price=100.0, size=30.0, side="buy"))
    events.sort(key=lambda e: e.ts)
    return events


def test_the_symbol_anomaly_speaks_for_the_accounts_it_lists():
    """The whale's pull fires the symbol (it names the whale); its cancels after that are the
    same episode: no anomaly of its own for an account the symbol's anomaly listed."""
    out = run(whale_stream())
    assert len(out) == 1, [(a.ts - T0, a.detail["scope"], a.severity) for a in out]
    [a] = out
    assert a.detail["scope"] == "symbol" and a.account == "whale" and T0 + 150_000 <= a.ts <= T0 + 150_500
    assert a.detail["top_accounts"][0]["account"] == "whale"


def test_a_large_order_pulled_near_the_touch_is_a_level():
    """One 2M order cancelled at the touch, 36x the depth resting near it: the level fires
    (warning, critical with the surprise) even when the statistical thresholds are out of
    reach; the detail says how much, where and against what depth."""
    out = run(whale_stream(), z_threshold=50.0, ratio_z_threshold=50.0, account_min_cancels=10_000)
    [a] = out
    assert a.severity == "warning" and a.detail["trigger"] == "level" and a.account == "whale"
    lv = a.detail["pulled_near_touch"]
    assert lv["side"] == "bid" and lv["lump"] == 1_999_800.0 and lv["ratio_to_depth"] >= 1.5
    assert lv["depth_near_touch"] < 100_000
    out = run(whale_stream(), pull_min_notional=3_000_000.0, z_threshold=50.0, account_min_cancels=10_000)
    assert out == []  # under the USD floor: no level


def test_baselines_pause_while_an_episode_is_open():
    """Nothing is learned on a symbol from its first anomaly until the episode is over (the
    condition clear for rearm_ms); learning resumes after."""
    d = CancelBurst(CancelBurstConfig())
    p = Pipeline(MarketState(), [d], tick_ms=250)
    events = whale_stream()
    seen = {}
    for t in (149_000, 150_500, 175_000, 185_000, 200_000):
        p.process([e for e in events if T0 + seen.get("t", 0) <= e.ts < T0 + t])
        p.advance_to(T0 + t)
        seen["t"] = t
        seen[t] = d._syms["BTC-PERP"].base_c.n
    assert seen[149_000] < seen[150_500]  # learning before
    assert seen[150_500] <= seen[175_000] <= seen[150_500] + 1  # paused inside the episode
    assert seen[200_000] > seen[185_000]  # and again after it


def test_baseline_memory_is_event_time():
    """The baselines' memory is a time constant of event time: a level shift is taken in at
    the same pace whether ticks come every 250 ms or every second."""
    from detectors.baseline import EventBaseline
    fast, slow = EventBaseline(60_000, 10_000, 0.1), EventBaseline(60_000, 10_000, 0.1)
    for ms in range(0, 1_200_000, 250):
        x = 1.0 if ms < 600_000 else 2.0
        fast.observe(x, ms)
        if ms % 1_000 == 0:
            slow.observe(x, ms)
    assert abs(fast.mean - slow.mean) < 0.01 and 1.99 < fast.mean < 2.0  # ten time constants later
    half = EventBaseline(60_000, 10_000, 0.1)
    for ms in range(0, 660_000, 250):
        half.observe(1.0 if ms < 600_000 else 2.0, ms)
    assert abs(half.mean - (2 - math.exp(-1))) < 0.02  # one time constant: 63% of the way


def test_baseline_hold_and_readmission():
    """A held (or protected) value is not learned, until values were refused for readmit_ms
    in a row: then the level is the new normal."""
    from detectors.baseline import EventBaseline
    b = EventBaseline(60_000, 10_000, 0.1, readmit_ms=30_000)
    for ms in range(0, 60_000, 250):
        b.observe(1.0, ms)
    n = b.n
    for ms in range(60_000, 89_750, 250):
        b.observe(5.0, ms, hold=True)
    assert b.n == n and b.mean == 1.0
    b.observe(5.0, 90_000, hold=True)
    assert b.n == n + 1 and b.mean > 1.0


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
    d = CancelBurst(CancelBurstConfig(max_accounts=3, warmup_ms=250))
    p = Pipeline(MarketState(), [d], tick_ms=250)
    p.process(calm_orders(seconds=30))
    assert len(d.accounts) == 3 and d.accounts.evicted > 0


def test_bad_settings_are_refused_naming_the_key():
    """A non-positive time constant or a negative level threshold is refused, naming its key."""
    for key, value in (("baseline_tau_ms", 0), ("window_ms", -1), ("pull_depth_x", -1.0), ("std_floor", -0.1)):
        try:
            build_config(CancelBurst, {key: value})
        except DetectorConfigError as e:
            assert key in str(e) and e.key.startswith("detectors.cancel_burst")
        else:
            raise AssertionError(key)
