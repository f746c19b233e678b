"""Per-account rows of a few floats, bounded by an LRU: the compact per-account state.

An exchange has millions of accounts, so a detector's per-account memory is a handful of
doubles in ``array('d')`` columns (8 bytes each) behind one exact LRU from account to its
slot (``monitor.state.slots.SlotLRU``: a plain dict entry plus 8 bytes of links, not an
``OrderedDict`` entry at ~110 bytes), instead of an object per account. At most ``cap``
accounts are kept; the least recently touched one is evicted in O(1) and its slot reused.
Eviction is counted: an evicted account starts a fresh row (zeros) the next time it is seen.
Slot 0 is the LRU's sentinel (its row is unused).

>>> rows = AccountRows(("n", "lev"), cap=2)
>>> N, LEV = 0, 1
>>> for acct in ("a", "b", "a", "c"):
...     i = rows.touch(acct)
...     rows.cols[N][i] += 1
>>> sorted(rows.slots), rows.evicted, rows.cols[N][rows.slots["a"]]
(['a', 'c'], 1, 2.0)
"""

from __future__ import annotations

from array import array

from monitor.state.slots import SlotLRU, grow, grow_by


class AccountRows:
    __slots__ = ("fields", "cap", "lru", "cols", "evicted")

    def __init__(self, fields: tuple[str, ...], cap: int) -> None:
        if cap < 1:
            raise ValueError("cap must be >= 1")
        self.fields = fields
        self.cap = cap
        self.lru = SlotLRU()
        self.cols = [array("d", [0.0]) for _ in fields]
        self.evicted = 0

    @property
    def slots(self) -> dict[str, int]:
        """account -> slot (read only)."""
        return self.lru.index

    def __len__(self) -> int:
        return len(self.lru.index)

    def __contains__(self, account: object) -> bool:
        return account in self.lru.index

    def get(self, account: str) -> int | None:
        """The account's slot without touching it (None if unknown)."""
        return self.lru.index.get(account)

    def touch(self, account: str) -> int:
        """The account's slot, created (zeroed) if new; marks it most recently used."""
        lru = self.lru
        i = lru.index.get(account)
        if i is not None:
            lru.move_to_end(i)
            return i
        if len(lru.index) >= self.cap:
            _, i = lru.pop_oldest()
            self.evicted += 1
            for col in self.cols:
                col[i] = 0.0
        i = lru.add(account)
        if i >= len(self.cols[0]):  # columns grow by blocks
            n = grow_by(i)
            for col in self.cols:
                grow(col, n, 0.0)
        return i

    def evict(self, account: str) -> None:
        """Forget one account (its slot is reused)."""
        i = self.lru.remove(account)
        if i is not None:
            for col in self.cols:
                col[i] = 0.0

    def row(self, account: str) -> dict[str, float] | None:
        """One account's row as a dict (for details and tests)."""
        i = self.lru.index.get(account)
        if i is None:
            return None
        return {f: self.cols[k][i] for k, f in enumerate(self.fields)}

    def __getstate__(self):
        top = self.lru.top  # without the unused tails of the column blocks
        return (self.fields, self.cap, self.lru, [col[:top] for col in self.cols], self.evicted)

    def __setstate__(self, s) -> None:
        if isinstance(s, tuple) and len(s) == 5:
            self.fields, self.cap, self.lru, self.cols, self.evicted = s
            return
        # before SlotLRU: (None, {slots: OrderedDict account -> slot from 0, cols, free, ...})
        d = s[1]
        self.fields, self.cap, self.evicted = d["fields"], d["cap"], d["evicted"]
        old = d["cols"]
        self.lru = SlotLRU()
        self.cols = [array("d", [0.0]) for _ in self.fields]
        for account, j in d["slots"].items():
            i = self.lru.add(account)
            for col, o in zip(self.cols, old):
                col.append(o[j])
            assert i == len(self.cols[0]) - 1  # a fresh LRU hands out 1, 2, 3, ...
