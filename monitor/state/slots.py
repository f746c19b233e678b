"""An exact LRU over integer slots: the index behind column-oriented per-account stores.

``OrderedDict`` costs ~110 bytes an entry (its dict entry plus a linked-list node and a
fast-node pointer). Here the recency list lives in two ``array('i')`` columns (``prv``,
``nxt``: 8 bytes a slot) threaded through slot 0 as the sentinel (``nxt[0]`` is the least
recently used slot, ``prv[0]`` the most recently used), behind one plain ``dict`` from key to
slot (~50 bytes an entry). Owners keep their per-key data in parallel columns indexed by
the slot: a slot freed by ``pop_oldest`` or ``remove`` is handed out again by ``add``; a
new slot is the next unused number (``top``), and the owner grows its columns when it
reaches their length (``grow``: by blocks, not an append per account on the hot path).

Every operation is O(1). Iteration is least to most recently used, like an ``OrderedDict``.

The slot numbers the index holds are one shared ``int`` object per number (``_INTS``, grown
as slots are): a slot past 256 is a 28-byte object, and the book's and each detector's LRU
would otherwise each hold their own for every account.

>>> lru = SlotLRU()
>>> a, b, c = lru.add("a"), lru.add("b"), lru.add("c")
>>> lru.move_to_end(a); list(lru), lru.pop_oldest(), list(lru)
(['b', 'c', 'a'], ('b', 2), ['c', 'a'])
>>> lru.add("d")  # reuses b's slot
2
"""

from __future__ import annotations

from array import array
from typing import Hashable, Iterator

_INTS: list[int] = list(range(1024))  # slot number -> its one int object, shared by every SlotLRU


def grow_by(n: int) -> int:
    """How many slots to add to columns of length ``n`` (~1/8 more, at least 64)."""
    return max(64, n >> 3)


def grow(col, n: int, fill) -> None:
    """Extend a column (``array`` or ``bytearray``) by ``n`` copies of ``fill``."""
    if type(col) is bytearray:
        col.extend(bytes([fill]) * n)
    else:
        col.extend(array(col.typecode, [fill]) * n)


def _slot(i: int) -> int:
    if i >= len(_INTS):
        _INTS.extend(range(len(_INTS), i + (i >> 3) + 1024))
    return _INTS[i]


class SlotLRU:
    __slots__ = ("index", "keys", "prv", "nxt", "free", "top")

    def __init__(self) -> None:
        self.index: dict[Hashable, int] = {}
        self.keys: list = [None]  # slot -> key (None: free or not yet used, and slot 0, the sentinel)
        self.prv = array("i", [0])
        self.nxt = array("i", [0])
        self.free: list[int] = []
        self.top = 1  # slots ever handed out, the sentinel included

    def __len__(self) -> int:
        return len(self.index)

    def __contains__(self, key: object) -> bool:
        return key in self.index

    def __iter__(self) -> Iterator:
        keys, nxt = self.keys, self.nxt
        i = nxt[0]
        while i:
            j = nxt[i]  # read first: the caller may remove the key it was given
            yield keys[i]
            i = j

    def slots(self) -> Iterator[int]:
        """Slots in use, least to most recently used."""
        nxt = self.nxt
        i = nxt[0]
        while i:
            yield i
            i = nxt[i]

    def get(self, key: Hashable) -> int | None:
        return self.index.get(key)

    def move_to_end(self, i: int) -> None:
        """Mark slot ``i`` most recently used."""
        prv, nxt = self.prv, self.nxt
        last = prv[0]
        if last == i:
            return
        p, n = prv[i], nxt[i]
        nxt[p] = n
        prv[n] = p
        nxt[last] = i
        prv[i] = last
        nxt[i] = 0
        prv[0] = i

    def add(self, key: Hashable) -> int:
        """A slot for a key not held, most recently used (a freed one, else ``top``)."""
        if self.free:
            i = self.free.pop()
        else:
            i = self.top
            i = _INTS[i] if i < len(_INTS) else _slot(i)
            self.top = i + 1
            if i >= len(self.keys):
                n = grow_by(i)
                self.keys.extend([None] * n)
                grow(self.prv, n, 0)
                grow(self.nxt, n, 0)
        self.keys[i] = key
        prv, nxt = self.prv, self.nxt
        last = prv[0]
        nxt[last] = i
        prv[i] = last
        nxt[i] = 0
        prv[0] = i
        self.index[key] = i
        return i

    def _unlink(self, i: int):
        prv, nxt = self.prv, self.nxt
        p, n = prv[i], nxt[i]
        nxt[p] = n
        prv[n] = p
        key = self.keys[i]
        self.keys[i] = None
        del self.index[key]
        self.free.append(i)
        return key

    def pop_oldest(self) -> tuple[Hashable, int]:
        """Remove the least recently used key; (key, its slot, now free)."""
        i = self.nxt[0]
        if not i:
            raise KeyError("empty")
        return self._unlink(i), i

    def remove(self, key: Hashable) -> int | None:
        """Remove a key; its slot (now free), or None if not held."""
        i = self.index.get(key)
        if i is not None:
            self._unlink(i)
        return i

    def __getstate__(self):
        # keys least to most recently used with their slots: no dict, no links on disk
        order = list(self.slots())
        return (self.top, [self.keys[i] for i in order], array("i", order), array("i", self.free))

    def __setstate__(self, s) -> None:
        n, keys, order, free = s
        self.top = n
        self.keys = [None] * n
        self.prv = array("i", bytes(4 * n))
        self.nxt = array("i", bytes(4 * n))
        self.index = {}
        prv, nxt, last = self.prv, self.nxt, 0
        for key, i in zip(keys, order):
            i = _slot(i)
            self.keys[i] = key
            self.index[key] = i
            nxt[last] = i
            prv[i] = last
            last = i
        nxt[last] = 0
        prv[0] = last
        self.free = [_slot(i) for i in free]
