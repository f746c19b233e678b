"""Positions per account and the cross collateral they share, bounded by an LRU.

An exchange has millions of accounts; this book keeps at most ``max_accounts`` and evicts
the least recently updated one in O(1). Eviction is counted and reported to ``on_evict``
(the exposure graph drops the account's links) before the account's slot is reused: an
evicted account comes back the next time it sends a position or account event.

Storage is column-oriented, for memory (issue 11): an account is an int slot (one plain
dict from id to slot plus an exact LRU list in two ``array('i')`` columns, see
``monitor.state.slots``) into ``array`` columns for equity, maintenance margin and time;
its positions are entries of one shared position pool (``array`` columns: symbol id, size,
entry, leverage, venue liquidation price, time, isolated flag) chained per account in the
order they were opened, as a dict would iterate them. No object, dict or float object per
account or position: an account with one position costs ~150 bytes instead of ~650.
``None`` (equity, maintenance margin, liq_price unknown) is stored as NaN.

Reads go through views made on demand: ``get`` returns an ``AccountState`` bound to the
account's slot (live: read it before the next update, do not keep it), whose
``positions`` is a fresh ``dict`` of ``Pos`` snapshots in opening order. A position
lookup walks the account's own positions (O(positions of the account), as every reader of
an account's positions already is).

>>> b = AccountBook(max_accounts=2)
>>> _ = b.position("a", "BTC-PERP", 0.5, 60000.0, 10.0, "cross", None, 1)
>>> _ = b.position("b", "BTC-PERP", -1.0, 60000.0, 5.0, "cross", None, 2)
>>> _ = b.position("c", "ETH-PERP", 3.0, 3000.0, 3.0, "cross", None, 3)
>>> list(b.accounts), b.evicted
(['b', 'c'], 1)
>>> st = b.get("c"); st.positions["ETH-PERP"].notional(), st.equity
(9000.0, None)
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from operator import itemgetter
from typing import Callable, Iterator

from monitor.state.slots import SlotLRU, grow, grow_by

NAN = float("nan")
_tuple_new = tuple.__new__


class Pos(tuple):
    """One position; ``size`` signed (long > 0). A snapshot (an immutable tuple: cheap to make
    on read; the book does not hold these)."""

    __slots__ = ()

    def __new__(cls, size: float = None, entry: float = None, leverage: float = None,  # type: ignore[assignment]
                isolated: bool = None, liq_price: float | None = None, ts: int = None):  # type: ignore[assignment]
        if size is None:  # a Pos pickled before it was a tuple: NEWOBJ with no arguments, then BUILD
            return _LegacyPos()
        return _tuple_new(cls, (size, entry, leverage, isolated, liq_price, ts))

    size = property(itemgetter(0))
    entry = property(itemgetter(1))
    leverage = property(itemgetter(2))
    isolated = property(itemgetter(3))
    liq_price = property(itemgetter(4))
    ts = property(itemgetter(5))

    def __getnewargs__(self):
        return tuple(self)

    def __repr__(self) -> str:
        return "Pos(%r, %r, %r, %r, %r, %r)" % tuple(self)

    def notional(self, price: float | None = None) -> float:
        return abs(self[0]) * (price if price is not None else self[1])


class _LegacyPos:
    """A Pos as checkpoints before the column store pickled it (read once, by the migration)."""

    __slots__ = ("size", "entry", "leverage", "isolated", "liq_price", "ts")

    def __setstate__(self, s):
        self.size, self.entry, self.leverage, self.isolated, self.liq_price, self.ts = s

    def notional(self, price: float | None = None) -> float:
        return abs(self.size) * (price if price is not None else self.entry)


class AccountState(tuple):
    """An account's cross collateral and positions by symbol: a view of its slot in the book,
    (book, slot). Live: read it before the next update of the book, do not keep it.

    ``name`` is the account id as the book keys it: holders of per-account maps key by
    this one string object rather than each event's copy of the id."""

    __slots__ = ()

    def __new__(cls, book: AccountBook = None, i: int = 0):  # type: ignore[assignment]
        if book is None:  # an AccountState pickled before the column store
            return _LegacyAccount()
        return _tuple_new(cls, (book, i))

    @property
    def name(self) -> str:
        return self[0]._lru.keys[self[1]]

    @property
    def equity(self) -> float | None:
        v = self[0].equity[self[1]]
        return None if v != v else v

    @property
    def maintenance_margin(self) -> float | None:
        v = self[0].margin[self[1]]
        return None if v != v else v

    @property
    def ts(self) -> int:
        return self[0].ts[self[1]]

    @property
    def positions(self) -> dict[str, Pos]:
        """The account's positions by symbol, in opening order (a fresh dict of snapshots)."""
        return self[0]._positions(self[1])

    def cross_symbols(self) -> list[str]:
        return [s for s, p in self.positions.items() if not p.isolated]

    def __reduce__(self):  # a view pickles as what it shows
        return (_legacy_account, ((self.equity, self.maintenance_margin, self.positions, self.ts, self.name),))


class _LegacyAccount:
    """An AccountState as checkpoints before the column store pickled it: a detached record
    (what ``AccountBook.__setstate__`` migrates)."""

    __slots__ = ("equity", "maintenance_margin", "positions", "ts", "name")

    def __setstate__(self, s):
        if len(s) == 4:  # a checkpoint from before ``name``
            s = (*s, "")
        self.equity, self.maintenance_margin, self.positions, self.ts, self.name = s

    def cross_symbols(self) -> list[str]:
        return [s for s, p in self.positions.items() if not p.isolated]


def _legacy_account(s) -> _LegacyAccount:
    a = _LegacyAccount()
    a.__setstate__(s)
    return a


class _Accounts(Mapping):
    """``book.accounts``: id -> AccountState, least to most recently updated."""

    __slots__ = ("_b",)

    def __init__(self, book: AccountBook) -> None:
        self._b = book

    def __getitem__(self, account: str) -> AccountState:
        st = self._b.get(account)
        if st is None:
            raise KeyError(account)
        return st

    def __iter__(self) -> Iterator[str]:
        return iter(self._b._lru)

    def __len__(self) -> int:
        return len(self._b._lru)

    def __contains__(self, account: object) -> bool:
        return account in self._b._lru.index


# columns of the account table and of the position pool, as pickled
_ACCOUNT_COLS = ("equity", "margin", "ts", "head")
_POS_COLS = ("p_sym", "p_size", "p_entry", "p_lev", "p_liq", "p_ts", "p_iso", "p_next")


class AccountBook:
    __slots__ = ("_lru", "max_accounts", "evicted", "on_evict", *_ACCOUNT_COLS, *_POS_COLS, "p_free", "p_top",
                 "sym_ids", "sym_names")

    def __init__(self, max_accounts: int = 2_000_000,
                 on_evict: Callable[[AccountState], None] | None = None) -> None:
        if max_accounts < 1:
            raise ValueError("max_accounts must be >= 1")
        self.max_accounts = max_accounts
        self.evicted = 0
        self.on_evict = on_evict
        self._lru = SlotLRU()
        # accounts, by slot (slot 0 is the LRU's sentinel)
        self.equity = array("d", [NAN])  # NaN: unknown
        self.margin = array("d", [NAN])  # maintenance margin; NaN: unknown
        self.ts = array("q", [0])
        self.head = array("i", [-1])  # first position in the pool, -1: none
        # the position pool: entries chained per account through p_next (-1 ends a chain)
        self.p_sym = array("i")  # symbol id (sym_names), -1: free entry
        self.p_size = array("d")
        self.p_entry = array("d")
        self.p_lev = array("d")
        self.p_liq = array("d")  # venue liq_price; NaN: none
        self.p_ts = array("q")
        self.p_iso = bytearray()
        self.p_next = array("i")
        self.p_free: list[int] = []
        self.p_top = 0  # pool entries ever used
        self.sym_ids: dict[str, int] = {}
        self.sym_names: list[str] = []

    # -- slots -------------------------------------------------------------------------
    def _new(self, account: str) -> int:
        lru = self._lru
        if len(lru.index) >= self.max_accounts:
            i = lru.nxt[0]
            if self.on_evict is not None:
                self.on_evict(_tuple_new(AccountState, (self, i)))
            lru.pop_oldest()
            self._clear(i)
            self.evicted += 1
        i = lru.add(account)
        if i >= len(self.equity):  # columns grow by blocks: no appends per account
            n = grow_by(i)
            grow(self.equity, n, NAN)
            grow(self.margin, n, NAN)
            grow(self.ts, n, 0)
            grow(self.head, n, -1)
        return i

    def _clear(self, i: int) -> None:
        j, p_next, p_sym, free = self.head[i], self.p_next, self.p_sym, self.p_free
        while j >= 0:
            p_sym[j] = -1
            free.append(j)
            j = p_next[j]
        self.equity[i] = NAN
        self.margin[i] = NAN
        self.ts[i] = 0
        self.head[i] = -1

    def _grow_pool(self, n: int) -> None:
        grow(self.p_sym, n, -1)
        grow(self.p_next, n, -1)
        for col in (self.p_size, self.p_entry, self.p_lev):
            grow(col, n, 0.0)
        grow(self.p_liq, n, NAN)
        grow(self.p_ts, n, 0)
        grow(self.p_iso, n, 0)

    def _sym(self, symbol: str) -> int:
        sid = self.sym_ids[symbol] = len(self.sym_names)
        self.sym_names.append(symbol)
        return sid

    def _positions(self, i: int) -> dict[str, Pos]:
        j = self.head[i]
        if j < 0:
            return {}
        if self.p_next[j] < 0:  # one position: the common case
            liq = self.p_liq[j]
            return {self.sym_names[self.p_sym[j]]: _tuple_new(Pos, (
                self.p_size[j], self.p_entry[j], self.p_lev[j], self.p_iso[j] == 1,
                None if liq != liq else liq, self.p_ts[j]))}
        out = {}
        names, p_sym, p_next, p_liq = self.sym_names, self.p_sym, self.p_next, self.p_liq
        p_size, p_entry, p_lev, p_iso, p_ts = self.p_size, self.p_entry, self.p_lev, self.p_iso, self.p_ts
        while j >= 0:
            liq = p_liq[j]
            out[names[p_sym[j]]] = _tuple_new(Pos, (p_size[j], p_entry[j], p_lev[j], p_iso[j] == 1,
                                                    None if liq != liq else liq, p_ts[j]))
            j = p_next[j]
        return out

    # -- updates -------------------------------------------------------------------------
    def _touch(self, account: str) -> int:
        """The account's slot, made if new, and now the most recently updated."""
        lru = self._lru
        i = lru.index.get(account)
        if i is None:
            return self._new(account)
        lru.move_to_end(i)
        return i

    def position(self, account: str, symbol: str, size: float, entry: float, leverage: float,
                 margin_mode: str, liq_price: float | None, ts: int) -> tuple[AccountState, Pos | None]:
        """Record a position update; returns (account, previous position or None)."""
        i = self._touch(account)
        sid = self.sym_ids.get(symbol)
        if sid is None:
            sid = self._sym(symbol)
        p_sym, p_next = self.p_sym, self.p_next
        j, before = self.head[i], -1
        while j >= 0 and p_sym[j] != sid:
            before = j
            j = p_next[j]
        if j >= 0:
            liq = self.p_liq[j]
            prev = _tuple_new(Pos, (self.p_size[j], self.p_entry[j], self.p_lev[j], self.p_iso[j] == 1,
                                    None if liq != liq else liq, self.p_ts[j]))
            if size == 0:  # closed: unchain and free the entry
                if before < 0:
                    self.head[i] = p_next[j]
                else:
                    p_next[before] = p_next[j]
                p_sym[j] = -1
                self.p_free.append(j)
                self.ts[i] = ts
                return _tuple_new(AccountState, (self, i)), prev
        else:
            prev = None
            if size == 0:
                self.ts[i] = ts
                return _tuple_new(AccountState, (self, i)), None
            if self.p_free:
                j = self.p_free.pop()
            else:
                j = self.p_top
                self.p_top = j + 1
                if j >= len(p_sym):
                    self._grow_pool(grow_by(j))
            p_sym[j] = sid
            p_next[j] = -1
            if before < 0:
                self.head[i] = j
            else:
                p_next[before] = j
        self.p_size[j] = size
        self.p_entry[j] = entry
        self.p_lev[j] = leverage
        self.p_liq[j] = NAN if liq_price is None else liq_price
        self.p_ts[j] = ts
        self.p_iso[j] = margin_mode == "isolated"
        self.ts[i] = ts
        return _tuple_new(AccountState, (self, i)), prev

    def collateral(self, account: str, equity: float, maintenance_margin: float | None,
                   ts: int) -> AccountState:
        i = self._touch(account)
        self.equity[i] = NAN if equity is None else equity
        if maintenance_margin is not None:
            self.margin[i] = maintenance_margin
        self.ts[i] = ts
        return _tuple_new(AccountState, (self, i))

    # -- reads ---------------------------------------------------------------------------
    def get(self, account: str) -> AccountState | None:
        i = self._lru.index.get(account)
        return _tuple_new(AccountState, (self, i)) if i is not None else None

    def lookup(self, account: str) -> tuple[str, float | None, dict[str, Pos]] | None:
        """(the book's string for the id, equity, positions) in one look-up, or None."""
        i = self._lru.index.get(account)
        if i is None:
            return None
        v = self.equity[i]
        return self._lru.keys[i], None if v != v else v, self._positions(i)

    def total_notional(self, account: str) -> float:
        """Sum of |size| x entry over the account's positions, in opening order (0 if not held):
        ``sum(p.notional() for p in positions.values())`` without making the positions."""
        i = self._lru.index.get(account)
        if i is None:
            return 0.0
        chain, j, p_next = [], self.head[i], self.p_next
        while j >= 0:
            chain.append(j)
            j = p_next[j]
        p_size, p_entry = self.p_size, self.p_entry
        return sum(abs(p_size[j]) * p_entry[j] for j in chain)

    def name(self, account: str) -> str | None:
        """The book's own string for an account id (None if not held): key per-account maps
        by it rather than by each event's copy."""
        i = self._lru.index.get(account)
        return self._lru.keys[i] if i is not None else None

    @property
    def accounts(self) -> _Accounts:
        """id -> AccountState, least to most recently updated (a read-only view)."""
        return _Accounts(self)

    def __len__(self) -> int:
        return len(self._lru)

    # -- checkpoints -----------------------------------------------------------------------
    def __getstate__(self):
        return {"version": 2, "max_accounts": self.max_accounts, "evicted": self.evicted,
                "on_evict": self.on_evict, "lru": self._lru, "p_free": self.p_free, "p_top": self.p_top,
                "sym_names": self.sym_names,  # columns without the unused tails of their blocks
                **{k: getattr(self, k)[:self._lru.top] for k in _ACCOUNT_COLS},
                **{k: getattr(self, k)[:self.p_top] for k in _POS_COLS}}

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple):  # before the column store: (None, {slot: value})
            self._migrate(state[1])
            return
        self.max_accounts, self.evicted, self.on_evict = state["max_accounts"], state["evicted"], state["on_evict"]
        self._lru, self.p_free, self.sym_names = state["lru"], state["p_free"], state["sym_names"]
        self.p_top = state["p_top"]
        self.sym_ids = {s: k for k, s in enumerate(self.sym_names)}
        for k in _ACCOUNT_COLS + _POS_COLS:
            setattr(self, k, state[k])

    def _migrate(self, old: dict) -> None:
        """Replay a checkpoint's OrderedDict of AccountState records into the columns."""
        AccountBook.__init__(self, old["max_accounts"], None)
        self.evicted = old["evicted"]
        for name, rec in old["accounts"].items():
            equity, mm, positions, ts = rec.equity, rec.maintenance_margin, rec.positions, rec.ts
            for symbol, p in positions.items():
                self.position(name, symbol, p.size, p.entry, p.leverage,
                              "isolated" if p.isolated else "cross", p.liq_price, p.ts)
            i = self._lru.index.get(name)
            if i is None:
                i = self._new(name)
            self.equity[i] = NAN if equity is None else equity
            self.margin[i] = NAN if mm is None else mm
            self.ts[i] = ts
        self.on_evict = old["on_evict"]
