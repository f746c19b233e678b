"""Per-account rows of a few floats, bounded by an LRU: the compact per-account state.

An exchange has millions of accounts, so a detector's per-account memory is a handful of
doubles in ``array('d')`` columns (8 bytes each) behind one ordered map from account to
its slot, instead of an object per account. At most ``cap`` accounts are kept; the least
recently touched one is evicted in O(1) and its slot reused. Eviction is counted: an
evicted account starts a fresh row (zeros) the next time it is seen.

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
from collections import OrderedDict


class AccountRows:
    __slots__ = ("fields", "cap", "slots", "cols", "free", "evicted")

    def __init__(self, fields: tuple[str, ...], cap: int) -> None:
        if cap < 1:
            raise ValueError("cap must be >= 1")
        self.fields = fields
        self.cap = cap
        self.slots: OrderedDict[str, int] = OrderedDict()
        self.cols = [array("d") for _ in fields]
        self.free: list[int] = []
        self.evicted = 0

    def __len__(self) -> int:
        return len(self.slots)

    def __contains__(self, account: object) -> bool:
        return account in self.slots

    def get(self, account: str) -> int | None:
        """The account's slot without touching it (None if unknown)."""
        return self.slots.get(account)

    def touch(self, account: str) -> int:
        """The account's slot, created (zeroed) if new; marks it most recently used."""
        slots = self.slots
        i = slots.get(account)
        if i is not None:
            slots.move_to_end(account)
            return i
        if len(slots) >= self.cap:
            _, i = slots.popitem(last=False)
            self.evicted += 1
            for col in self.cols:
                col[i] = 0.0
        elif self.free:
            i = self.free.pop()
        else:
            i = len(self.cols[0])
            for col in self.cols:
                col.append(0.0)
        slots[account] = i
        return i

    def evict(self, account: str) -> None:
        """Forget one account (its slot is reused)."""
        i = self.slots.pop(account, None)
        if i is not None:
            for col in self.cols:
                col[i] = 0.0
            self.free.append(i)

    def row(self, account: str) -> dict[str, float] | None:
        """One account's row as a dict (for details and tests)."""
        i = self.slots.get(account)
        if i is None:
            return None
        return {f: self.cols[k][i] for k, f in enumerate(self.fields)}
