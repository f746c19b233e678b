"""thin_book_cluster on crafted streams: a liquidation cluster near a thin book."""

import pickle
import random

import msgspec
import pytest

from detectors.thin_book_cluster import ThinBookCluster, ThinBookClusterConfig
from monitor.events import Account, Book, Heartbeat, Mark, Position
from monitor.pipeline import Pipeline
from monitor.state import MarketState
from monitor.state.liquidation import liquidation_price
from tests.streams import T0

SYM = "BTC-PERP"


def market(seconds=240, cluster_at=None, surge=None, gap_at=None, resync_at=None, seed=3, whales=30,
           whale_notional=30_000.0, cluster_over=0.0, near_x=1.0, whale_equity=None):
    """Mid 100, bids/asks every 5 bps with 100 each (~1e4 notional a level). 300 background
    isolated accounts at 2-5x (liquidations 20-50% away) and 40 small 20x ones (~4.5% away, ~120k
    in all: less than min_cluster_notional);
    churn 2 position changes/s, a book delta every tick, marks each second. ``cluster_at``:
    ``whales`` accounts open 40x longs (~2.1% below the mark) at that second. ``surge`` = (start,
    end) triples churn and book activity. ``gap_at`` drops a book message (sequence gap).
    ``cluster_over``: the whales open one by one over this many seconds instead of at once;
    ``near_x``: bids within 100 bps of the mark hold this x the size; ``whale_equity``: the
    whales are cross accounts with this equity (the venue's liq_price still ~2.1% below)."""
    rng = random.Random(seed)
    def bid(k, q=100.0):
        return q * (near_x if k <= 20 else 1.0)

    ev = [Book(symbol=SYM, ts=T0, seq=1, snapshot=True, bids=[(100 - 0.05 * k, bid(k)) for k in range(1, 101)],
               asks=[(100 + 0.05 * k, 100.0) for k in range(1, 101)])]
    seq = 1
    accts = [(f"bg-{i}", rng.choice((2.0, 3.0, 5.0)), rng.uniform(5_000, 50_000)) for i in range(300)]
    accts += [(f"hi-{i}", 20.0, rng.uniform(1_500, 4_500)) for i in range(40)]

    def pos(ts, name, lev, notional, side=1):
        size = side * notional / 100.0
        venue = 100.0 * (1 - side / lev + side * 0.004)  # the venue's rougher figure, for the cross-check
        return [Account(account=name, ts=ts, equity=notional / lev),
                Position(account=name, symbol=SYM, ts=ts, size=size, entry_price=100.0, leverage=lev,
                         margin_mode="isolated", liq_price=venue)]

    for i, (name, lev, n) in enumerate(accts):
        ev += pos(T0 + 1 + i, name, lev, n, side=rng.choice((1, -1)))
    for step in range(1, seconds * 4):
        ts = T0 + step * 250
        t = step / 4
        x = 3 if surge and surge[0] <= t < surge[1] else 1
        for _ in range(x):
            k = rng.randint(1, 100)
            seq += 1
            if gap_at is not None and gap_at <= t < gap_at + 0.25:
                seq += 1  # a message lost on the way
            side = "bids" if rng.random() < 0.5 else "asks"
            px = 100 - 0.05 * k if side == "bids" else 100 + 0.05 * k
            q = 100.0 + rng.uniform(-5, 5)
            ev.append(Book(symbol=SYM, ts=ts, seq=seq, **{side: [(px, bid(k, q) if side == "bids" else q)]}))
        if resync_at is not None and resync_at <= t < resync_at + 0.25:
            seq += 1
            ev.append(Book(symbol=SYM, ts=ts, seq=seq, snapshot=True,
                           bids=[(100 - 0.05 * k, bid(k)) for k in range(1, 101)],
                           asks=[(100 + 0.05 * k, 100.0) for k in range(1, 101)]))
        for _ in range(sum(rng.random() < 0.5 for _ in range(x))):
            name, lev, n = rng.choice(accts)
            ev += pos(ts + 1, name, lev, n * rng.uniform(0.8, 1.25), side=rng.choice((1, -1)))
        if step % 4 == 0:
            ev.append(Mark(symbol=SYM, ts=ts + 2, mark=100.0 + rng.uniform(-0.01, 0.01), index=100.0,
                           funding_rate=0.0001, open_interest=1e5))
        if cluster_at is not None:
            for i in range(whales):  # whale i opens at cluster_at + i x cluster_over / whales
                at = cluster_at + i * cluster_over / whales
                if at <= t < at + 0.25:
                    ev += pos(ts + 3, f"whale-{i}", 40.0, whale_notional)
                    if whale_equity is not None:  # cross, with too little equity by our formula
                        ev[-2] = Account(account=f"whale-{i}", ts=ts + 3, equity=whale_equity)
                        ev[-1] = msgspec.structs.replace(ev[-1], margin_mode="cross")
    return ev


def run(events, **cfg):
    d = ThinBookCluster(ThinBookClusterConfig(**cfg))
    p = Pipeline(MarketState(), [d], tick_ms=250)
    return p.process(events) + p.flush(), d, p


def test_fires_on_cluster_near_thin_book():
    """~880k (at their liquidation prices) of 40x longs ~2% below the mark, against ~50k of bids
    in their band: far over critical_factor, so critical."""
    out, _, _ = run(market(cluster_at=150))
    assert out, "no anomaly"
    a = out[0]
    assert a.kind == "thin_book_cluster" and a.symbol == SYM and a.account is None
    assert T0 + 150_000 <= a.ts <= T0 + 152_000
    d = a.detail
    assert d["side"] == "long" and d["rule"] == "pressure" and a.severity == "critical"
    assert 180 <= d["band"]["near_distance_bps"] <= d["band"]["distance_bps"] <= 260
    assert d["forced_notional_in_band"] >= 850_000 > 100_000 > d["absorbing_depth"] > 30_000
    assert d["ratio"] == pytest.approx(d["forced_notional_in_band"] / d["absorbing_depth"], rel=1e-3)
    assert d["ratio"] >= d["thresholds"]["critical_factor"] * d["thresholds"]["factor"]
    assert d["accounts"] == 30 and d["effective_accounts"] >= d["thresholds"]["min_accounts"]
    top = d["top_accounts"]
    assert len(top) == 5 and all(t["account"].startswith("whale-") for t in top)
    assert all(t["venue_liq_price"] and abs(t["divergence_bps"]) < 100 for t in top)  # the cross-check
    assert len(out) == 1, [x.detail["rule"] for x in out]  # the persisting cluster is one episode


def test_below_critical_factor_far_from_the_mark_is_a_warning():
    """The same cluster with critical_factor above its ratio (and the band beyond
    critical_distance_bps): a warning."""
    out, _, _ = run(market(cluster_at=150), critical_factor=100.0)
    assert [a.severity for a in out] == ["warning"]


def test_silent_without_cluster():
    """The same market without the whales raises nothing."""
    assert run(market())[0] == []


def test_silent_during_warm_up():
    """A cluster before the symbol's warm-up is over raises nothing."""
    assert run(market(cluster_at=20, seconds=55))[0] == []


def test_silent_on_benign_3x_surge():
    """Three times the position churn and book activity, same distribution: silent."""
    assert run(market(surge=(100, 160)))[0] == []


def test_quiet_while_the_book_is_unreliable():
    """A cluster during a sequence gap is not judged on a book with a hole; after the snapshot it is."""
    out, d, _ = run(market(cluster_at=150, gap_at=149))
    assert out == [] and d._syms[SYM].unreliable_evals > 0
    out, _, _ = run(market(cluster_at=150, gap_at=149, resync_at=170))
    assert out and out[0].ts >= T0 + 170_000


def test_buckets_match_a_recomputation_from_scratch():
    """After thousands of incremental updates the buckets equal a fresh recomputation.

    (Funding off: with it a position's price is as of its last update, and marks move.)"""
    events = market(seconds=120, cluster_at=60)
    _, d, p = run(events, include_funding=False)
    fresh = ThinBookCluster(ThinBookClusterConfig(include_funding=False))
    for acct in p.state.accounts.accounts:
        fresh._dirty[acct] = None
    fresh.on_tick(p.clock.now + 250, p.state)
    for side in ("long", "short"):
        got, want = getattr(d._syms[SYM], side).hist, getattr(fresh._syms[SYM], side).hist
        assert set(got) == set(want)
        assert all(got[k] == pytest.approx(want[k], rel=1e-9) for k in want)


def test_liquidation_prices_use_the_config():
    """Per-symbol tiers and the fee change where a position sits; funding only when included."""
    st = MarketState()
    for e in (Mark(symbol=SYM, ts=T0, mark=100.0, index=100.0, funding_rate=0.001),
              Position(account="a", symbol=SYM, ts=T0, size=1.0, entry_price=100.0, leverage=10.0,
                       margin_mode="isolated")):
        st.apply(e)
    flat = ThinBookCluster(ThinBookClusterConfig(tiers={SYM: [(1e12, 0.01)]}, taker_fee=0.001, include_funding=False))
    [(_, liq, notional, _)] = flat.liquidations("a", st)
    assert liq == pytest.approx(90.0 / (1 - 0.01 - 0.001)) and notional == pytest.approx(liq)
    funded = ThinBookCluster(ThinBookClusterConfig(tiers={SYM: [(1e12, 0.01)]}, taker_fee=0.001))
    [(_, liq2, _, _)] = funded.liquidations("a", st)
    assert liq2 == pytest.approx(liquidation_price(1.0, 100.0, 10.0, tiers=((float("inf"), 0.01),), fee=0.001,
                                                   funding=0.1))


def test_cross_positions_share_the_account_equity():
    """Two cross longs on one account: each uses the shared equity and the other's maintenance."""
    st = MarketState()
    for e in (Mark(symbol=SYM, ts=T0, mark=100.0, index=100.0), Mark(symbol="ETH-PERP", ts=T0, mark=10.0, index=10.0),
              Account(account="a", ts=T0, equity=50.0),
              Position(account="a", symbol=SYM, ts=T0, size=1.0, entry_price=100.0, leverage=10.0),
              Position(account="a", symbol="ETH-PERP", ts=T0, size=5.0, entry_price=10.0, leverage=10.0)):
        st.apply(e)
    d = ThinBookCluster(ThinBookClusterConfig(default_tiers=[(1e12, 0.005)], taker_fee=0.0, include_funding=False))
    got = {s: liq for s, liq, _, _ in d.liquidations("a", st)}
    assert got[SYM] == pytest.approx((0.25 - 50 + 100) / 0.995)  # other_mm = 5 * 10 * 0.005
    assert got["ETH-PERP"] == pytest.approx((0.5 - 50 + 50) / (5 * 0.995))


def test_contributions_are_bounded_and_evicted_cleanly():
    """With max_accounts = 50 only 50 accounts contribute, and the buckets hold exactly theirs."""
    _, d, _ = run(market(seconds=30), max_accounts=50)
    assert len(d._lru) == 50 and d.evicted > 0
    # a bucket holds one account as its id alone, more as a dict account -> notional
    held = sum(1 if type(m) is str else len(m)
               for side in (d._syms[SYM].long, d._syms[SYM].short) for m in side.members.values())
    assert held == 50


def test_checkpoint_resumes_with_identical_output():
    """Pickling the pipeline mid-stream and resuming gives the same anomalies as one run."""
    events = market(cluster_at=150)
    whole, _, _ = run(events)
    p = Pipeline(MarketState(), [ThinBookCluster()], tick_ms=250)
    half = len(events) // 2
    first = p.process(events[:half])
    p2 = Pipeline.restore(pickle.loads(pickle.dumps(p.checkpoint())))
    assert first + p2.process(events[half:]) + p2.flush() == whole


def test_heartbeat_only_is_silent():
    """Event time moving with nothing else: no anomaly, no error."""
    assert run([Heartbeat(ts=T0 + i * 1000) for i in range(300)])[0] == []


def test_sub_unit_prices_keep_longs_and_shorts_apart():
    """Below a price of 1 buckets are negative; longs and shorts still land and leave on their own sides."""
    st, d = MarketState(), ThinBookCluster(ThinBookClusterConfig(include_funding=False))
    events = [Mark(symbol="XRP-PERP", ts=T0, mark=0.6, index=0.6)]
    for i in range(20):
        events.append(Position(account=f"x{i}", symbol="XRP-PERP", ts=T0, size=(-1) ** i * 10_000.0,
                               entry_price=0.6, leverage=20.0, margin_mode="isolated"))
    for e in events:
        st.apply(e)
        if type(e) in d.consumes:
            d.on_event(e, st)
    d.on_tick(T0 + 250, st)
    s = d._syms["XRP-PERP"]
    assert all(k < 0 for k in s.long.hist) and len(s.long.members[next(iter(s.long.members))]) == 10
    assert sum(s.long.hist.values()) == pytest.approx(10 * 10_000 * 0.6 * (1 - 0.05 + 0.004), rel=0.01)
    for i in range(20):  # everyone closes: both sides empty again
        e = Position(account=f"x{i}", symbol="XRP-PERP", ts=T0 + 300, size=0.0, entry_price=0.6, leverage=20.0)
        st.apply(e)
        d.on_event(e, st)
    d.on_tick(T0 + 500, st)
    assert s.long.hist == {} and s.short.hist == {} and len(d._lru) == 0


def _with_linked_positions(isolated_second: bool, whales: int = 30):
    """market() with, at t=150 s, ``whales`` cross accounts opening 40x BTC longs (~2% below
    the mark) whose collateral also backs a 10x long on ETH-PERP (a book of ~1e5 notional
    within 100 bps of its mark 50)."""
    ev = market()
    eth = Book(symbol="ETH-PERP", ts=T0, seq=1, snapshot=True, bids=[(50 - 0.05 * k, 200.0) for k in range(1, 21)],
               asks=[(50 + 0.05 * k, 200.0) for k in range(1, 21)])
    at = next(i for i, e in enumerate(ev) if e.ts >= T0 + 150_000)
    ts = ev[at].ts
    extra = []
    for i in range(whales):
        name = f"whale-{i}"
        extra += [Position(account=name, symbol=SYM, ts=ts, size=300.0, entry_price=100.0, leverage=40.0,
                           margin_mode="cross"),
                  Position(account=name, symbol="ETH-PERP", ts=ts, size=400.0, entry_price=50.0, leverage=10.0,
                           margin_mode="isolated" if isolated_second else "cross"),
                  Account(account=name, ts=ts, equity=700.0)]  # thin collateral: BTC liquidates ~1.5% down
    return ev[:1] + [eth] + ev[1:at] + extra + ev[at:]


def test_contagion_flags_the_linked_symbol_of_a_cross_cluster():
    """A cluster of cross accounts on BTC whose collateral also backs ETH longs: ETH is flagged
    too (rule contagion, from BTC), naming the flow those accounts' liquidation would dump."""
    out, _, _ = run(_with_linked_positions(isolated_second=False), contagion=True)
    assert any(a.symbol == SYM and a.detail["rule"] == "pressure" for a in out)
    [eth] = [a for a in out if a.symbol == "ETH-PERP"]
    assert eth.detail["rule"] == "contagion" and eth.detail["source_symbol"] == SYM
    assert eth.detail["linked_accounts"] == 30 and eth.detail["linked_notional"] == pytest.approx(30 * 400 * 50.0)
    assert eth.severity == "warning"


def test_no_contagion_through_isolated_positions():
    """The same cluster whose ETH legs are isolated: their margin is their own, ETH stays quiet."""
    out, _, _ = run(_with_linked_positions(isolated_second=True), contagion=True)
    assert any(a.symbol == SYM for a in out)
    assert [a for a in out if a.symbol == "ETH-PERP"] == []


def test_contagion_is_off_by_default():
    """Without contagion = true, the linked symbol is not flagged."""
    out, _, _ = run(_with_linked_positions(isolated_second=False))
    assert any(a.symbol == SYM for a in out) and [a for a in out if a.symbol == "ETH-PERP"] == []


def test_one_whale_near_its_liquidation_is_not_a_cluster():
    """One account holding as much as the 30-account cluster, in the same band: not a cluster
    (without it the band holds nothing); the 30 accounts are."""
    assert run(market(cluster_at=150, whales=1, whale_notional=900_000.0))[0] == []
    assert run(market(cluster_at=150, whales=30, whale_notional=30_000.0))[0]


def test_a_cluster_forming_slowly_fires_on_the_level():
    """30 accounts opening one by one over 4 minutes: the level fires while it forms (a
    baseline that learned the cluster as it formed would never see it as unusual)."""
    out, d, _ = run(market(seconds=420, cluster_at=150, cluster_over=240.0))
    assert out and out[0].detail["side"] == "long"
    assert out[0].ts < T0 + 390_000  # before the last account has opened
    assert 20 <= out[0].detail["accounts"] < 30
    assert len(out) <= 2 and all(a.severity in ("warning", "critical") for a in out)


def test_a_few_large_accounts_are_not_a_cluster():
    """Four accounts with 200k each in one band (each nearing its own liquidation): the band
    without its largest is still over its depth, but it is four accounts, not a crowd."""
    assert run(market(cluster_at=150, whales=4, whale_notional=200_000.0))[0] == []


def test_a_cluster_behind_a_deep_near_book():
    """Bids within 100 bps of the mark ten times as deep: the depth between the mark and the
    cluster (~2.4M) exceeds it, but when price gets there the cluster's ~880k meets ~50k."""
    out, _, _ = run(market(cluster_at=150, near_x=10.0))
    assert out and out[0].detail["side"] == "long"
    assert out[0].detail["band"]["near_distance_bps"] >= 150 and out[0].detail["ratio"] > 5


def test_a_growing_cluster_is_one_anomaly():
    """The cluster grows in three waves (10, 30, 90 accounts), each tripling its notional:
    still one episode, one anomaly (re-fired only on a higher severity)."""
    ev = market(cluster_at=120, whales=10)
    for wave, at in ((30, 150), (90, 180)):
        extra = [e for e in market(cluster_at=at, whales=wave) if isinstance(e, (Account, Position))
                 and e.account.startswith("whale-") and e.ts >= T0 + at * 1000]
        ev = sorted(ev + extra, key=lambda e: e.ts)
    out, _, _ = run(ev)
    assert len(out) == 1 and out[0].severity == "critical"


def test_crossed_liquidation_prices_use_the_venues():
    """Cross accounts whose equity (by our formula) is already under maintenance, still open at
    the venue with its liq_price ~2.1% below: they count there, where the venue will close them."""
    out, d, _ = run(market(cluster_at=150, whale_equity=50.0))
    assert out and out[0].detail["side"] == "long" and 180 <= out[0].detail["band"]["near_distance_bps"] <= 260
    assert d._syms[SYM].venue_fallback >= 30


def test_the_baseline_does_not_learn_an_open_episode():
    """While the cluster's episode is open its side's baseline stops learning (event time)."""
    _, d1, _ = run(market(seconds=170, cluster_at=150))
    _, d2, _ = run(market(seconds=240, cluster_at=150))
    assert d1._syms[SYM].long.base.n == d2._syms[SYM].long.base.n > 100


def test_a_checkpoint_from_before_the_band_rule_resumes():
    """A detector pickled before squared notionals and the event-time baseline existed
    resumes: both are rebuilt, and the cluster after it is still flagged."""
    from detectors.baseline import Baseline

    events = market(cluster_at=150)
    half = next(i for i, e in enumerate(events) if e.ts >= T0 + 100_000)
    p = Pipeline(MarketState(), [ThinBookCluster()], tick_ms=250)
    assert p.process(events[:half]) == []
    d = p.detectors[0]
    want = {k: v for k, v in d._syms[SYM].long.sq.items()}
    for side in (d._syms[SYM].long, d._syms[SYM].short):  # as an older version pickled them
        del side.sq
        side.base = Baseline(0.02, 20, 0.2, 2400)
    del d._syms[SYM].venue_fallback
    p2 = Pipeline.restore(pickle.loads(pickle.dumps(p.checkpoint())))
    d2 = p2.detectors[0]
    assert d2._syms[SYM].long.sq == pytest.approx(want) and d2._syms[SYM].venue_fallback == 0
    out = p2.process(events[half:]) + p2.flush()
    assert out and out[0].detail["side"] == "long"
