"""The exposure graph: return correlation, shared cross collateral, forced flow; and the
incidents and inhibitions built on it."""

import math
import pickle
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.correlate import Correlator, Incident
from alerts.mute import Muter, inhibitor
from alerts.silence import Silence
from monitor.events import Anomaly, Liquidation, Mark
from monitor.pipeline import Pipeline
from monitor.state import ExposureGraph, MarketState
from monitor.state.accounts import AccountBook
from tests.support import T0


def marks_stream(seconds: int, seed: int = 3):
    """A and B share a market factor (rho ~0.9); C walks alone. One mark a second each."""
    rng = random.Random(seed)
    px = {"A": 100.0, "B": 50.0, "C": 10.0}
    for s in range(seconds):
        f = rng.gauss(0, 1)
        px["A"] *= math.exp(0.001 * (f + 0.3 * rng.gauss(0, 1)))
        px["B"] *= math.exp(0.001 * (f + 0.3 * rng.gauss(0, 1)))
        px["C"] *= math.exp(0.001 * rng.gauss(0, 1))
        yield [Mark(symbol=k, ts=T0 + s * 1000, mark=v, index=v) for k, v in px.items()]


def run_marks(seconds: int, **graph) -> MarketState:
    state = MarketState(exposure=ExposureGraph(**graph))
    p = Pipeline(state, [], tick_ms=250)
    for frame in marks_stream(seconds):
        p.process(frame)
    return state


def test_correlated_returns_link_symbols_independent_do_not():
    """After warm-up, co-moving symbols are neighbours with their rho; an independent one is not."""
    state = run_marks(900)
    g = state.exposure
    assert g.correlation("A", "B") > 0.8
    assert abs(g.correlation("A", "C")) < 0.3
    links = g.neighbours("A", T0 + 900_000)
    assert list(links) == ["B"] and links["B"].startswith("returns correlated (rho 0.")


def test_no_correlation_edge_before_enough_samples():
    """Fewer common returns than corr_min_samples: no correlation, no edge."""
    g = run_marks(200, corr_min_samples=60).exposure  # 200 s at 5 s = 39 returns
    assert g.correlation("A", "B") is None and g.neighbours("A", T0 + 200_000) == {}


def test_correlation_slots_are_bounded_and_idle_slots_give_way():
    """With two slots the third symbol is refused until a slotted symbol stops moving."""
    g = ExposureGraph(max_corr_symbols=2, return_interval_ms=1000)
    state = MarketState(exposure=g)
    p = Pipeline(state, [], tick_ms=250)
    for i, frame in enumerate(marks_stream(40)):
        if i >= 5:  # A freezes after 5 s
            frame = [m for m in frame if m.symbol != "A"] + [Mark(symbol="A", ts=frame[0].ts, mark=100.0, index=100.0)]
        p.process(frame)
    assert g.unslotted > 0  # C was refused while A and B held the slots
    assert set(g.slots) == {"B", "C"}  # A idle for 30 samples gave its slot to C
    assert g.cov.shape == (2, 2)


def positions(g: ExposureGraph, book: AccountBook, acct: str, symbol: str, size: float, mode="cross"):
    st, prev = book.position(acct, symbol, size, 100.0, 5.0, mode, None, T0)
    g.on_position(st, symbol, prev)


def test_shared_cross_collateral_links_symbols_weighted_by_notional():
    """Cross positions in two symbols link them by the smaller notional; isolated ones do not."""
    g = ExposureGraph(min_collateral_share=0.2)
    book = AccountBook(on_evict=g.forget_account)
    positions(g, book, "a1", "BTC", 10.0)          # 1000 cross notional
    positions(g, book, "a1", "ETH", 3.0)           # 300 -> shared 300
    positions(g, book, "a2", "ETH", 7.0)           # ETH cross total 1000
    positions(g, book, "a3", "SOL", 50.0, "isolated")
    positions(g, book, "a3", "BTC", 1.0)
    assert g.collateral_share("BTC", "ETH") == 300 / 1000
    assert g.neighbours("ETH", T0) == {"BTC": "shared cross collateral 30% of notional"}
    assert g.collateral_share("BTC", "SOL") == 0.0
    positions(g, book, "a1", "ETH", 0.0)  # closed: the link goes
    assert g.neighbours("ETH", T0) == {} and g.collateral_edges == 0


def test_evicted_account_takes_its_links_with_it():
    """An account leaving the LRU stops linking its symbols."""
    g = ExposureGraph()
    book = AccountBook(max_accounts=1, on_evict=g.forget_account)
    positions(g, book, "a1", "BTC", 1.0)
    positions(g, book, "a1", "ETH", 1.0)
    assert g.collateral_share("BTC", "ETH") == 1.0
    positions(g, book, "a2", "SOL", 1.0)  # evicts a1
    assert g.collateral_share("BTC", "ETH") == 0.0 and g.cross_notional["BTC"] == 0.0


updates = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d"]), st.sampled_from(["X", "Y", "Z"]),
                             st.sampled_from([0.0, 0.5, 1.0, -2.0, 3.0]), st.booleans()), max_size=60)


@settings(max_examples=200, deadline=None)
@given(updates, st.integers(min_value=1, max_value=4))
def test_incremental_collateral_equals_recomputation(seq, max_accounts):
    """Whatever the sequence of position changes and evictions, the kept weights equal a
    from-scratch sum over the accounts still held."""
    g = ExposureGraph()
    book = AccountBook(max_accounts=max_accounts, on_evict=g.forget_account)
    for acct, sym, size, isolated in seq:
        positions(g, book, acct, sym, size, "isolated" if isolated else "cross")
    want: dict[tuple[str, str], float] = {}
    notional: dict[str, float] = {}
    for a in book.accounts.values():
        cross = {s: p.notional() for s, p in a.positions.items() if not p.isolated}
        for s, n in cross.items():
            notional[s] = notional.get(s, 0.0) + n
            for t, m in cross.items():
                if s != t:
                    want[(s, t)] = want.get((s, t), 0.0) + min(n, m)
    got = {(s, t): w for s, row in g.collateral.items() for t, w in row.items()}
    assert got.keys() == {k for k, w in want.items() if w > 1e-6}
    assert all(math.isclose(got[k], want[k], abs_tol=1e-6) for k in got)
    for s in ("X", "Y", "Z"):
        assert math.isclose(g.cross_notional.get(s, 0.0), notional.get(s, 0.0), abs_tol=1e-6)


def liquidate(state: MarketState, symbol: str, ts: int) -> None:
    state.apply(Liquidation(symbol=symbol, ts=T0 + ts, side="sell", price=100.0, size=1.0))


def test_forced_flow_links_symbols_whose_liquidations_chain():
    """Liquidations in B soon after A's, three times, link A and B; the link then decays."""
    state = MarketState(exposure=ExposureGraph(min_forced_flow=2.5, forced_flow_halflife_ms=3_600_000))
    for k in range(3):
        liquidate(state, "A", k * 300_000)
        liquidate(state, "B", k * 300_000 + 20_000)
        liquidate(state, "C", k * 300_000 + 150_000)  # 130 s after B, 150 s before A: chains nothing
    g, now = state.exposure, T0 + 620_000
    assert math.isclose(g.forced_flow("A", "B", now), 2 ** (-600 / 3600) + 2 ** (-300 / 3600) + 1)
    assert g.neighbours("B", now) == {"A": "forced flow: 2.8 liquidation chains"}
    assert g.forced_flow("B", "C", now) == 0.0 and g.forced_flow("A", "C", now) == 0.0
    assert g.neighbours("B", now + 3_600_000) == {}  # one half-life later: 1.4 chains


def test_graph_pickles_and_keeps_answering():
    """The graph rides in the checkpoint: a round trip keeps every answer."""
    state = run_marks(600)
    state.exposure.collateral_delta("A", "C", 10.0)
    again = pickle.loads(pickle.dumps(state))
    assert again.exposure.neighbours("A", T0 + 600_000) == state.exposure.neighbours("A", T0 + 600_000)
    assert again.accounts.on_evict.__self__ is again.exposure


def anomaly(kind, ts, symbol, severity="warning", account=None):
    return Anomaly.make(kind, T0 + ts, 5.0, severity, symbol=symbol, account=account)


def test_correlated_symbols_join_one_incident_and_escalate():
    """A thin-book cluster on A and a cancel burst on correlated B are one critical incident;
    the timeline says which edge joined them; an unlinked symbol stays apart."""
    state = run_marks(900)
    c = Correlator()
    first, _ = c.add(anomaly("thin_book_cluster", 900_000, "A"), state)
    other, _ = c.add(anomaly("cancel_burst", 901_000, "C"), state)
    joined, synth = c.add(anomaly("cancel_burst", 902_000, "B"), state)
    assert joined is first and other is not first
    assert joined.timeline[1]["reason"].startswith("A: returns correlated (rho 0.")
    assert [a.kind for a in synth] == ["cascade_risk"] and joined.severity == "critical"


def incident(*anomalies: Anomaly) -> Incident:
    inc = Incident(anomalies[0])
    for a in anomalies:
        inc.add(a, "test")
    return inc


def test_critical_incident_inhibits_what_it_already_says_only():
    """A lesser incident repeating a critical one's (kind, symbol) pairs is muted; a new kind speaks."""
    crit = incident(anomaly("thin_book_cluster", 0, "A"), anomaly("cancel_burst", 1, "A"),
                    anomaly("cascade_risk", 1, "A", "critical"))
    repeat = incident(anomaly("cancel_burst", 700_000, "A"))
    news = incident(anomaly("cancel_burst", 700_000, "A"), anomaly("feed_gap", 700_001, "A"))
    open_ = [crit, repeat, news]
    assert inhibitor(repeat, open_) is crit and inhibitor(news, open_) is None
    assert inhibitor(crit, open_) is None  # a critical incident is never inhibited
    crit.status = "resolved"
    assert inhibitor(repeat, open_) is None


def test_muter_gives_one_reason_silence_first():
    """Silences and inhibitions answer through one interface, with the reason."""
    crit = incident(anomaly("cancel_burst", 0, "A"), anomaly("cascade_risk", 1, "A", "critical"))
    repeat = incident(anomaly("cancel_burst", 700_000, "A"))
    m = Muter([Silence("s1", "A", None, None, 0.0, 100.0)])
    assert m.reason(repeat, [crit, repeat], now=50.0) == "silenced"
    assert m.reason(repeat, [crit, repeat], now=150.0) == f"inhibited by {crit.id}"
    assert m.reason(crit, [crit, repeat], now=150.0) is None


def test_forced_flow_into_a_thin_book_cluster_escalates():
    """A thin-book cluster on B while liquidations keep chaining from A into B is a
    critical cascade risk, with the chains as evidence; without the flow it stays a warning."""
    state = MarketState(exposure=ExposureGraph(min_forced_flow=3.0))
    quiet = Correlator()
    inc, synth = quiet.add(anomaly("thin_book_cluster", 0, "B"), state)
    assert synth == [] and inc.severity == "warning"
    for k in range(4):
        liquidate(state, "A", k * 10_000)
        liquidate(state, "B", k * 10_000 + 2_000)
    inc, synth = Correlator().add(anomaly("thin_book_cluster", 40_000, "B"), state)
    [risk] = synth
    assert risk.kind == "cascade_risk" and inc.severity == "critical"
    assert risk.detail["rule"] == "thin_book_cluster + forced flow (liquidations chaining) into its symbol"
    assert [(f["from"], f["into"]) for f in risk.detail["forced_flow"]] == [("A", "B")]
    assert risk.detail["forced_flow"][0]["chains"] > 3.0
