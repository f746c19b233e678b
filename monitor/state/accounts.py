"""Positions per account and the cross collateral they share, bounded by an LRU.

An exchange has millions of accounts; this map keeps at most ``max_accounts`` and
evicts the least recently updated one (O(1) with an ordered dict). Eviction is counted
and reported to ``on_evict`` (the exposure graph drops the account's links): an evicted
account comes back the next time it sends a position or account event.

>>> b = AccountBook(max_accounts=2)
>>> _ = b.position("a", "BTC-PERP", 0.5, 60000.0, 10.0, "cross", None, 1)
>>> _ = b.position("b", "BTC-PERP", -1.0, 60000.0, 5.0, "cross", None, 2)
>>> _ = b.position("c", "ETH-PERP", 3.0, 3000.0, 3.0, "cross", None, 3)
>>> list(b.accounts), b.evicted
(['b', 'c'], 1)
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable


class Pos:
    """One position; ``size`` signed (long > 0)."""

    __slots__ = ("size", "entry", "leverage", "isolated", "liq_price", "ts")

    def __init__(self, size: float, entry: float, leverage: float, isolated: bool,
                 liq_price: float | None, ts: int) -> None:
        self.size = size
        self.entry = entry
        self.leverage = leverage
        self.isolated = isolated
        self.liq_price = liq_price
        self.ts = ts

    def __getstate__(self):
        return (self.size, self.entry, self.leverage, self.isolated, self.liq_price, self.ts)

    def __setstate__(self, s):
        self.size, self.entry, self.leverage, self.isolated, self.liq_price, self.ts = s

    def notional(self, price: float | None = None) -> float:
        return abs(self.size) * (price if price is not None else self.entry)


class AccountState:
    """An account's cross collateral and positions by symbol. ``name`` is the account id as
    the book keys it: holders of per-account maps key by this one string object rather than
    each event's copy of the id (~50 bytes an account per map)."""

    __slots__ = ("equity", "maintenance_margin", "positions", "ts", "name")

    def __init__(self, name: str = "") -> None:
        self.equity: float | None = None
        self.maintenance_margin: float | None = None
        self.positions: dict[str, Pos] = {}
        self.ts = 0
        self.name = name

    def __getstate__(self):
        return (self.equity, self.maintenance_margin, self.positions, self.ts, self.name)

    def __setstate__(self, s):
        if len(s) == 4:  # a checkpoint from before ``name``
            s = (*s, "")
        self.equity, self.maintenance_margin, self.positions, self.ts, self.name = s

    def cross_symbols(self) -> list[str]:
        return [s for s, p in self.positions.items() if not p.isolated]


class AccountBook:
    __slots__ = ("accounts", "max_accounts", "evicted", "on_evict")

    def __init__(self, max_accounts: int = 2_000_000,
                 on_evict: Callable[[AccountState], None] | None = None) -> None:
        self.accounts: OrderedDict[str, AccountState] = OrderedDict()
        self.max_accounts = max_accounts
        self.evicted = 0
        self.on_evict = on_evict

    def _touch(self, account: str) -> AccountState:
        accounts = self.accounts
        st = accounts.get(account)
        if st is None:
            st = accounts[account] = AccountState(account)
            if len(accounts) > self.max_accounts:
                _, gone = accounts.popitem(last=False)
                self.evicted += 1
                if self.on_evict is not None:
                    self.on_evict(gone)
        else:
            accounts.move_to_end(account)
        return st

    def position(self, account: str, symbol: str, size: float, entry: float, leverage: float,
                 margin_mode: str, liq_price: float | None, ts: int) -> tuple[AccountState, Pos | None]:
        """Record a position update; returns (account, previous position or None)."""
        st = self._touch(account)
        prev = st.positions.get(symbol)
        if size == 0:
            st.positions.pop(symbol, None)
        else:
            st.positions[symbol] = Pos(size, entry, leverage, margin_mode == "isolated", liq_price, ts)
        st.ts = ts
        return st, prev

    def collateral(self, account: str, equity: float, maintenance_margin: float | None,
                   ts: int) -> AccountState:
        st = self._touch(account)
        st.equity = equity
        if maintenance_margin is not None:
            st.maintenance_margin = maintenance_margin
        st.ts = ts
        return st

    def get(self, account: str) -> AccountState | None:
        return self.accounts.get(account)

    def __len__(self) -> int:
        return len(self.accounts)
