"""The exposure graph: which symbols stress can travel between, kept online on event time.

Symbols are nodes. Three kinds of edge, each with its own evidence:

- **returns**: the EW correlation of sampled mark log-returns (``return_interval`` apart,
  half-life ``corr_halflife``); an edge once both symbols have ``corr_min_samples``
  returns in common and |rho| >= ``min_return_corr``. One numpy matrix over at most
  ``max_corr_symbols`` symbols (first come; a symbol without a new mark for 30 samples
  gives its slot up).
- **collateral**: accounts holding *cross* positions in both symbols share one pool of
  margin, so forced selling in one drains the other. Weight = sum over accounts of the
  smaller of the two entry notionals; an edge when that is >= ``min_collateral_share`` of
  the smaller symbol's total cross notional. Kept incrementally from position events
  (O(positions of the account)), and an account evicted from the LRU takes its weight
  with it.
- **forced flow**: a liquidation in B within ``forced_flow_window`` after one in A counts
  once for A->B; counts decay with half-life ``forced_flow_halflife``; an edge when the
  decayed count in either direction is >= ``min_forced_flow``. A liquidation chains from
  at most ``max_flow_sources`` (K) sources: the most recently liquidated distinct symbols
  within the window (arrival order), so a market-wide cascade over thousands of symbols
  costs at most K pair updates per liquidation, not one per symbol.

Pure, synchronous, picklable (it rides in the checkpoint with the rest of the state).
Per event it does dict updates only; the correlation matrix is updated at samples.
Bounded: at most ``max_corr_symbols`` slots, ``max_edges`` collateral and flow edges
each. Collateral past that drops its weakest tenth. Flow pairs are evicted one at a time,
the weakest first, in O(log n) amortized: all counts decay at one rate, so the order of
two pairs by decayed count never changes between their updates, and a min-heap keyed by
``log(count) + decay x ts`` (time-invariant) finds the weakest without re-sorting; stale
heap entries (a pair updated since) are skipped and the heap is rebuilt once it holds
twice the live pairs. The recent-liquidation table holds at most K symbols.

>>> g = ExposureGraph(min_collateral_share=0.2)
>>> g.collateral_delta("BTC", "ETH", 50_000.0)
>>> g.cross_notional.update(BTC=100_000.0, ETH=200_000.0)
>>> g.neighbours("BTC", now=0)
{'ETH': 'shared cross collateral 50% of notional'}
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict
from typing import TYPE_CHECKING, Iterable

import numpy as np

if TYPE_CHECKING:
    from monitor.state.accounts import AccountState, Pos

STALE_SAMPLES = 30  # a slot whose symbol has not moved for this many samples can be reused
MAX_FLOW_SOURCES = 64  # K: recent liquidated symbols a liquidation chains from


class ExposureGraph:
    def __init__(self, *, max_corr_symbols: int = 256, max_flow_sources: int = MAX_FLOW_SOURCES, **params) -> None:
        """``max_corr_symbols`` sizes the matrix, ``max_flow_sources`` is K (recent liquidated
        symbols a liquidation chains from); ``params`` are ``configure``'s."""
        if max_flow_sources < 1:
            raise ValueError("max_flow_sources must be >= 1")
        self.max_flow_sources = max_flow_sources
        self.flow = {}
        self._flow_heap: list[tuple[float, str, str, float, int]] = []
        self.configure(**params)
        self.cap = max_corr_symbols
        # returns
        self.slots: dict[str, int] = {}
        self.names: list[str | None] = [None] * self.cap
        self.free = list(range(self.cap - 1, -1, -1))
        self.prev_mark = np.full(self.cap, np.nan)
        self.idle = np.zeros(self.cap, dtype=np.int64)  # samples since the mark last moved
        self.mean = np.zeros(self.cap)
        self.cov = np.zeros((self.cap, self.cap))
        self.count = np.zeros((self.cap, self.cap), dtype=np.int32)
        self.next_sample = 0
        self.unslotted = 0  # symbols refused a slot (all taken, none stale)
        # collateral
        self.collateral: dict[str, dict[str, float]] = {}
        self.cross_notional: dict[str, float] = {}
        self.collateral_edges = 0
        # forced flow
        # symbol -> ts of its latest liquidation, in arrival order (the most recent last)
        self.last_liquidation: OrderedDict[str, int] = OrderedDict()
        self.flow: dict[tuple[str, str], tuple[float, int]] = {}  # (from, to) -> (count, ts of count)
        # min-heap of (log count + decay x ts, from, to, count, ts); entries whose pair changed are stale
        self._flow_heap: list[tuple[float, str, str, float, int]] = []
        self.flow_updates = 0  # pair updates made by liquidations (the work per liquidation, counted)
        self.dropped_edges = 0

    def configure(self, *, return_interval_ms: int = 5_000, corr_halflife_ms: int = 900_000,
                  min_return_corr: float = 0.6, corr_min_samples: int = 60, min_collateral_share: float = 0.2,
                  forced_flow_window_ms: int = 60_000, forced_flow_halflife_ms: int = 1_800_000,
                  min_forced_flow: float = 3.0, max_edges: int = 200_000) -> None:
        """Thresholds and rates, applied at construction and again to a restored checkpoint."""
        self.return_interval_ms = return_interval_ms
        self.alpha = 1.0 - 0.5 ** (return_interval_ms / corr_halflife_ms)
        self.min_return_corr = min_return_corr
        self.corr_min_samples = corr_min_samples
        self.min_collateral_share = min_collateral_share
        self.forced_flow_window_ms = forced_flow_window_ms
        self.flow_decay_per_ms = math.log(2) / forced_flow_halflife_ms
        self.min_forced_flow = min_forced_flow
        self.max_edges = max_edges
        if self.flow:  # the heap's keys depend on the decay rate
            self._rebuild_flow_heap()

    # -- returns ---------------------------------------------------------------------------
    def sample(self, now: int, marks: dict) -> None:
        """At most once per ``return_interval``: one log-return per symbol, one EW update."""
        if now < self.next_sample:
            return
        self.next_sample = now - now % self.return_interval_ms + self.return_interval_ms
        ret = np.zeros(self.cap)
        valid = np.zeros(self.cap, dtype=bool)
        full = False  # once a symbol is refused, the rest of this sample are too
        for symbol, m in marks.items():
            # The tick fires on the first event at or past ``now``: a mark stamped ``now`` is
            # the future for the symbols whose marks at ``now`` have not arrived yet.
            mark = m.mark if m.ts < now else m.prev_mark
            if mark is None:
                continue
            i = self.slots.get(symbol)
            if i is None:
                i = None if full else self._slot(symbol)
                if i is None:
                    full = True
                    self.unslotted += 1
                    continue
            prev = self.prev_mark[i]
            if prev == prev:  # not NaN
                ret[i] = math.log(mark / prev)
                valid[i] = True
                self.idle[i] = 0 if mark != prev else self.idle[i] + 1
            self.prev_mark[i] = mark
        if valid.sum() < 2:
            return
        a = self.alpha
        diff = np.where(valid, ret - self.mean, 0.0)
        self.mean += a * diff
        both = np.outer(valid, valid)
        self.cov = np.where(both, (1.0 - a) * (self.cov + a * np.outer(diff, diff)), self.cov)
        self.count += both

    def _slot(self, symbol: str) -> int | None:
        if self.free:
            free = self.free.pop()
        else:
            free = int(np.argmax(self.idle))
            if self.idle[free] < STALE_SAMPLES:
                return None
            del self.slots[self.names[free]]
        self.names[free] = symbol
        self.slots[symbol] = free
        self.prev_mark[free] = np.nan
        self.idle[free] = 0
        self.mean[free] = 0.0
        self.cov[free, :] = self.cov[:, free] = 0.0
        self.count[free, :] = self.count[:, free] = 0
        return free

    def correlation(self, a: str, b: str) -> float | None:
        """EW correlation of the two symbols' returns, None until warm or without variance."""
        i, j = self.slots.get(a), self.slots.get(b)
        if i is None or j is None or self.count[i, j] < self.corr_min_samples:
            return None
        den = math.sqrt(self.cov[i, i] * self.cov[j, j])
        return float(self.cov[i, j] / den) if den > 0 else None

    # -- collateral ------------------------------------------------------------------------
    def on_position(self, st: AccountState, symbol: str, prev: Pos | None) -> None:
        """An account's position in ``symbol`` changed from ``prev`` to what ``st`` now holds.
        (On the hot path: notional and min are inlined.)"""
        old = abs(prev.size) * prev.entry if prev is not None and not prev.isolated else 0.0
        positions = st.positions
        cur = positions.get(symbol)
        new = abs(cur.size) * cur.entry if cur is not None and not cur.isolated else 0.0
        if old == new:
            return
        totals = self.cross_notional
        total = totals.get(symbol, 0.0) + new - old
        totals[symbol] = total if total > 0.0 else 0.0
        if len(positions) > (cur is not None):
            for other, p in positions.items():
                if other != symbol and not p.isolated:
                    n = abs(p.size) * p.entry
                    delta = (new if new < n else n) - (old if old < n else n)
                    if delta:
                        self.collateral_delta(symbol, other, delta)

    def forget_account(self, st: AccountState) -> None:
        """The account left the LRU: its positions stop linking symbols."""
        cross = [(s, p.notional()) for s, p in st.positions.items() if not p.isolated]
        for k, (s, n) in enumerate(cross):
            self.cross_notional[s] = max(self.cross_notional.get(s, 0.0) - n, 0.0)
            for t, m in cross[k + 1:]:
                self.collateral_delta(s, t, -min(n, m))

    def collateral_delta(self, a: str, b: str, delta: float) -> None:
        if not delta:
            return
        self._half_edge(a, b, delta)
        self._half_edge(b, a, delta)
        if self.collateral_edges > 2 * self.max_edges:
            self._prune_collateral()

    def _half_edge(self, x: str, y: str, delta: float) -> None:
        row = self.collateral.get(x)
        if row is None:
            row = self.collateral[x] = {}
        w = row.get(y)
        if w is None:
            if delta > 1e-6:
                row[y] = delta
                self.collateral_edges += 1
        elif w + delta > 1e-6:
            row[y] = w + delta
        else:
            del row[y]
            self.collateral_edges -= 1

    def _prune_collateral(self) -> None:
        weights = sorted(w for row in self.collateral.values() for w in row.values())
        cut = weights[len(weights) // 10]
        for row in self.collateral.values():
            for y in [y for y, w in row.items() if w <= cut]:
                del row[y]
                self.collateral_edges -= 1
                self.dropped_edges += 1

    def collateral_share(self, a: str, b: str) -> float:
        w = self.collateral.get(a, {}).get(b, 0.0)
        base = min(self.cross_notional.get(a, 0.0), self.cross_notional.get(b, 0.0))
        return w / base if base > 0 else 0.0

    # -- forced flow -----------------------------------------------------------------------
    def on_liquidation(self, symbol: str, ts: int) -> None:
        """A liquidation in ``symbol``: one chain from each of the (at most K) symbols liquidated
        most recently within the window. O(K) pair updates plus O(log n) amortized eviction."""
        window = self.forced_flow_window_ms
        recent = self.last_liquidation
        while recent:  # expire from the oldest end (amortized O(1): each entry leaves once)
            oldest = next(iter(recent))
            if ts - recent[oldest] <= window and len(recent) <= self.max_flow_sources:
                break
            del recent[oldest]
        flow, heap, decay = self.flow, self._flow_heap, self.flow_decay_per_ms
        k = self.max_flow_sources
        for other in reversed(recent):
            t = recent[other]
            if ts - t > window:  # older arrivals than this one are (almost surely) older still
                break
            if other == symbol:
                continue
            key = (other, symbol)
            count = self.chains(other, symbol, ts) + 1.0
            flow[key] = (count, ts)
            heapq.heappush(heap, (math.log(count) + decay * ts, other, symbol, count, ts))
            self.flow_updates += 1
            k -= 1
            if k == 0:
                break
        recent[symbol] = ts
        recent.move_to_end(symbol)
        if len(recent) > self.max_flow_sources:
            recent.popitem(last=False)
        while len(flow) > self.max_edges:
            self._evict_weakest_flow()
        if len(heap) > 2 * len(flow) + 64:
            self._rebuild_flow_heap()

    def _evict_weakest_flow(self) -> None:
        flow, heap = self.flow, self._flow_heap
        while heap:
            _, a, b, count, t = heapq.heappop(heap)
            if flow.get((a, b)) == (count, t):  # live, not superseded by a later update
                del flow[(a, b)]
                self.dropped_edges += 1
                return
        self._rebuild_flow_heap()  # unreachable while every pair has a heap entry; stay safe
        if heap:
            self._evict_weakest_flow()

    def _rebuild_flow_heap(self) -> None:
        decay = self.flow_decay_per_ms
        self._flow_heap = [(math.log(c) + decay * t, a, b, c, t) for (a, b), (c, t) in self.flow.items() if c > 0]
        heapq.heapify(self._flow_heap)

    def __setstate__(self, d: dict) -> None:
        """Checkpoints from before the bounded flow table: a plain dict of recent liquidations, no heap."""
        self.__dict__.update(d)
        if not isinstance(self.last_liquidation, OrderedDict):
            self.last_liquidation = OrderedDict(sorted(self.last_liquidation.items(), key=lambda kv: kv[1]))
        self.__dict__.setdefault("max_flow_sources", MAX_FLOW_SOURCES)
        self.__dict__.setdefault("flow_updates", 0)
        if "_flow_heap" not in d:
            self._rebuild_flow_heap()

    def chains(self, a: str, b: str, now: int) -> float:
        """Decayed count of liquidations in ``b`` soon after liquidations in ``a``."""
        count, ts = self.flow.get((a, b), (0.0, now))
        return count * math.exp(-self.flow_decay_per_ms * max(now - ts, 0))

    def forced_flow(self, a: str, b: str, now: int) -> float:
        """Decayed count of liquidation chains between the two symbols, either way."""
        return max(self.chains(a, b, now), self.chains(b, a, now))

    def flow_into(self, symbol: str, now: int) -> list[tuple[str, float]]:
        """The symbols whose liquidations chain into ``symbol`` at or above ``min_forced_flow``."""
        found = ((a, self.chains(a, symbol, now)) for a in sorted({a for a, b in self.flow if b == symbol}))
        return [(a, n) for a, n in found if n >= self.min_forced_flow]

    # -- the question the correlator asks --------------------------------------------------
    def neighbours(self, symbol: str, now: int, among: Iterable[str] | None = None) -> dict[str, str]:
        """Symbols linked to ``symbol`` now, each with the strongest evidence in words."""
        candidates = set(among) if among is not None else (
            set(self.collateral.get(symbol, ())) | {b for a, b in self.flow if a == symbol}
            | {a for a, b in self.flow if b == symbol} | set(self.slots))
        candidates.discard(symbol)
        out: dict[str, str] = {}
        for other in sorted(candidates):
            share = self.collateral_share(symbol, other)
            if share >= self.min_collateral_share:
                out[other] = f"shared cross collateral {share:.0%} of notional"
                continue
            flow = self.forced_flow(symbol, other, now)
            if flow >= self.min_forced_flow:
                out[other] = f"forced flow: {flow:.1f} liquidation chains"
                continue
            rho = self.correlation(symbol, other)
            if rho is not None and abs(rho) >= self.min_return_corr:
                out[other] = f"returns correlated (rho {rho:.2f})"
        return out
