"""The compact per-account stores (issue 11) against naive dict models: the column-oriented
AccountBook, the SlotLRU behind it and the detectors' rows, and thin_book_cluster's
contribution records and bucket members. Random sequences of updates, evictions and pickle
round trips; each must behave exactly like the model it replaced."""

import math
import pickle
from collections import OrderedDict

from hypothesis import given, settings
from hypothesis import strategies as st

from detectors.rows import AccountRows
from detectors.thin_book_cluster import ThinBookCluster, ThinBookClusterConfig, _unpack
from monitor.events import Account, Mark, Position
from monitor.state import MarketState
from monitor.state.accounts import AccountBook, Pos
from monitor.state.slots import SlotLRU
from tests.support import T0

ACCTS = [f"acct-{i}" for i in range(7)]
SYMS = ["BTC-PERP", "ETH-PERP", "SOL-PERP", "XRP-PERP"]

position_op = st.tuples(
    st.just("position"), st.sampled_from(ACCTS), st.sampled_from(SYMS),
    st.sampled_from([0.0, 0.0, 1.5, -2.0, 0.25, 7.0]), st.sampled_from([100.0, 3000.0, 0.6]),
    st.sampled_from([2.0, 5.0, 10.0, 50.0]), st.sampled_from(["cross", "isolated"]),
    st.sampled_from([None, 95.5, 0.0]))
collateral_op = st.tuples(st.just("collateral"), st.sampled_from(ACCTS), st.sampled_from([0.0, 1e3, 5e4]),
                          st.sampled_from([None, 10.0, 0.0]))
ops = st.lists(st.one_of(position_op, collateral_op, st.just(("pickle",))), max_size=80)


class NaiveBook:
    """What AccountBook was: an OrderedDict of per-account dicts, LRU by update."""

    def __init__(self, cap: int) -> None:
        self.accounts: OrderedDict[str, dict] = OrderedDict()
        self.cap, self.evicted, self.gone = cap, 0, []

    def _touch(self, a: str) -> dict:
        st_ = self.accounts.get(a)
        if st_ is None:
            st_ = self.accounts[a] = {"equity": None, "mm": None, "ts": 0, "positions": {}}
            if len(self.accounts) > self.cap:
                name, old = self.accounts.popitem(last=False)
                self.evicted += 1
                self.gone.append((name, dict(old["positions"])))
        else:
            self.accounts.move_to_end(a)
        return st_

    def position(self, a, sym, size, entry, lev, mode, liq, ts):
        st_ = self._touch(a)
        prev = st_["positions"].get(sym)
        if size == 0:
            st_["positions"].pop(sym, None)
        else:
            st_["positions"][sym] = Pos(size, entry, lev, mode == "isolated", liq, ts)
        st_["ts"] = ts
        return prev

    def collateral(self, a, equity, mm, ts):
        st_ = self._touch(a)
        st_["equity"] = equity
        if mm is not None:
            st_["mm"] = mm
        st_["ts"] = ts


def same(book: AccountBook, model: NaiveBook) -> None:
    assert list(book.accounts) == list(model.accounts)
    assert len(book) == len(model.accounts) <= model.cap
    assert book.evicted == model.evicted
    for name, m in model.accounts.items():
        got = book.get(name)
        assert got.name == name and got.equity == m["equity"] and got.maintenance_margin == m["mm"]
        assert got.ts == m["ts"]
        assert list(got.positions.items()) == list(m["positions"].items())  # values and order
        assert got.cross_symbols() == [s for s, p in m["positions"].items() if not p.isolated]
    assert book.get("nobody") is None


class Gone:
    """on_evict that records (account, its positions) as the book reports them."""

    def __init__(self) -> None:
        self.seen: list = []

    def __call__(self, s) -> None:
        self.seen.append((s.name, s.positions))


@settings(max_examples=300, deadline=None)
@given(cap=st.integers(1, 5), ops=ops)
def test_account_book_behaves_like_the_ordered_dict_it_replaced(cap, ops):
    book = AccountBook(cap, on_evict=Gone())
    model = NaiveBook(cap)
    for ts, op in enumerate(ops, 1):
        if op[0] == "pickle":
            book = pickle.loads(pickle.dumps(book))
        elif op[0] == "position":
            _, a, sym, size, entry, lev, mode, liq = op
            st_, prev = book.position(a, sym, size, entry, lev, mode, liq, ts)
            assert prev == model.position(a, sym, size, entry, lev, mode, liq, ts)
            assert st_.name == a
        else:
            _, a, equity, mm = op
            assert book.collateral(a, equity, mm, ts).name == a
            model.collateral(a, equity, mm, ts)
        same(book, model)
        assert book.on_evict.seen == model.gone  # evicted accounts reported with their positions, in order


def test_a_checkpoint_from_before_the_column_store_is_migrated():
    """An AccountBook pickled as the OrderedDict of AccountState records loads into columns."""
    import copyreg  # noqa: F401  (the old format is the default reduce of a __slots__ class)
    from monitor.state.accounts import AccountState

    rec = AccountState.__new__(AccountState)  # what unpickling an old AccountState does
    old_pos = Pos.__new__(Pos)
    old_pos.__setstate__((1.0, 100.0, 2.0, True, 95.5, 4))
    rec.__setstate__((5e4, 10.0, {"ETH-PERP": Pos(-2.0, 3000.0, 5.0, False, None, 3), "BTC-PERP": old_pos}, 4, "b"))
    old = AccountBook.__new__(AccountBook)
    old.__setstate__((None, {"accounts": OrderedDict(b=rec), "max_accounts": 3, "evicted": 2, "on_evict": None}))
    st_ = old.get("b")
    assert (st_.equity, st_.maintenance_margin, st_.ts, old.evicted, len(old)) == (5e4, 10.0, 4, 2, 1)
    assert list(st_.positions.items()) == [("ETH-PERP", Pos(-2.0, 3000.0, 5.0, False, None, 3)),
                                           ("BTC-PERP", Pos(1.0, 100.0, 2.0, True, 95.5, 4))]


lru_ops = st.lists(st.tuples(st.sampled_from(["add", "touch", "pop", "remove", "pickle"]),
                             st.sampled_from(ACCTS)), max_size=100)


@settings(max_examples=300, deadline=None)
@given(ops=lru_ops)
def test_slot_lru_is_an_ordered_dict(ops):
    lru, model = SlotLRU(), OrderedDict()
    for op, k in ops:
        if op == "add" and k not in model:
            i = lru.add(k)
            assert i not in model.values() and i > 0
            model[k] = i
        elif op == "touch" and k in model:
            lru.move_to_end(model[k])
            model.move_to_end(k)
        elif op == "pop" and model:
            assert lru.pop_oldest() == model.popitem(last=False)
        elif op == "remove":
            assert lru.remove(k) == model.pop(k, None)
        elif op == "pickle":
            lru = pickle.loads(pickle.dumps(lru))
        assert list(lru) == list(model) and len(lru) == len(model)
        assert {k: lru.get(k) for k in model} == dict(model)
        assert list(lru.slots()) == list(model.values())


@settings(max_examples=300, deadline=None)
@given(cap=st.integers(1, 4), ops=st.lists(st.tuples(st.sampled_from(["touch", "evict", "pickle"]),
                                                      st.sampled_from(ACCTS), st.floats(-5, 5)), max_size=80))
def test_account_rows_are_an_lru_of_dicts(cap, ops):
    rows, model, evicted = AccountRows(("x", "y"), cap), OrderedDict(), 0
    for op, k, v in ops:
        if op == "touch":
            i = rows.touch(k)
            if k in model:
                model.move_to_end(k)
            else:
                model[k] = {"x": 0.0, "y": 0.0}
                if len(model) > cap:
                    model.popitem(last=False)
                    evicted += 1
            rows.cols[0][i] += v
            model[k]["x"] += v
        elif op == "evict":
            rows.evict(k)
            model.pop(k, None)
        else:
            rows = pickle.loads(pickle.dumps(rows))
        assert list(rows.lru) == list(model) and rows.evicted == evicted and len(rows) <= cap
        assert {k: rows.row(k) for k in model} == dict(model)
        assert all(rows.row(k) is None for k in ACCTS if k not in model)


def members(d: ThinBookCluster) -> dict:
    """Every (symbol, side, bucket) -> {account: notional}, materialized from the compact form."""
    out = {}
    for symbol, s in d._syms.items():
        sid = d._sym_ids.get(symbol)
        for short, side in ((False, s.long), (True, s.short)):
            for k in side.members:
                out[(symbol, short, k)] = dict(d._members(sid, short, side, k))
    return out


@settings(max_examples=150, deadline=None)
@given(cap=st.integers(1, 4), ops=ops)
def test_thin_book_cluster_records_match_a_naive_recompute(cap, ops):
    """The bucket members and contribution records hold exactly what a fresh recompute of the
    LRU's accounts gives, bucket sums match the members, the bound holds, and a pickled copy
    carries on identically."""
    state = MarketState()
    cfg = ThinBookClusterConfig(max_accounts=cap, include_funding=False)
    d = ThinBookCluster(cfg)
    for s, px in zip(SYMS, (100.0, 3000.0, 20.0, 0.6)):
        state.apply(Mark(symbol=s, ts=T0, mark=px, index=px))
    now = T0
    for op in ops + [("pickle",)]:
        now += 250
        if op[0] == "pickle":
            copy = pickle.loads(pickle.dumps((state, d)))
            assert members(copy[1]) == members(d)
            state, d = copy
            continue
        if op[0] == "position":
            _, a, sym, size, entry, lev, mode, liq = op
            ev = Position(account=a, symbol=sym, ts=now, size=size, entry_price=entry, leverage=lev,
                          margin_mode=mode, liq_price=liq or None)
        else:
            _, a, equity, mm = op
            ev = Account(account=a, ts=now, equity=equity, maintenance_margin=mm)
        state.apply(ev)
        d.on_event(ev, state)
        d.on_tick(now, state)
        assert len(d._lru) <= cap
        got = members(d)
        # naive: each held account's contributions, recomputed from the state as it is now
        want: dict = {}
        for acct in d._lru:
            fresh = [(sym, notional < 0, math.floor(math.log(liq) / d._lb), abs(notional))
                     for sym, liq, notional, _ in d.liquidations(acct, state)]
            rec = [(d._sym_names[sid], short, k, n) for (sid, short, k), n in
                   ((_unpack(code), n) for code, n in d._record(d._lru.get(acct)))]
            assert rec == fresh
            for sym, short, k, n in fresh:
                want.setdefault((sym, short, k), {})[acct] = n
        assert got == want
        for (symbol, short, k), m in got.items():
            side = d._syms[symbol].short if short else d._syms[symbol].long
            assert math.isclose(side.hist[k], sum(m.values()), rel_tol=1e-9, abs_tol=1e-6)
            assert type(side.members[k]) is (str if len(m) == 1 else dict)
        for symbol, s in d._syms.items():
            assert set(s.long.hist) == {k for (y, sh, k) in got if y == symbol and not sh}
            assert set(s.short.hist) == {k for (y, sh, k) in got if y == symbol and sh}
