"""thin_book_cluster: more forced flow parked near the mark than the book can absorb.

Liquidation prices come from ``monitor.state.liquidation``: maintenance-margin tiers
(``tiers`` per symbol, else ``default_tiers``), the taker fee charged on the forced close
(``taker_fee``), the funding payment due at the next funding time, and for cross positions
the account's shared equity and the maintenance margin of its other cross positions (a
cross position of an account whose equity is unknown is treated as isolated at its
leverage). The venue's ``liq_price`` is only a cross-check: its divergence from ours is
reported for the accounts named in an anomaly and counted per symbol.

Per symbol, liquidation notional sits in log-price buckets of ``bucket_bps`` (longs and
shorts apart), updated incrementally: a position or account event marks the account
dirty; at the next tick its old contributions are taken out and new ones put in (at
most ``max_dirty`` accounts wait: past that the oldest is recomputed at once). A
symbol is evaluated at most once per ``eval_ms`` when its buckets or mark changed (and
every 4 x ``eval_ms`` regardless: the book moves too). Longs
liquidate into the bids below the mark, shorts into the asks above it. Walking out from
the mark bucket by bucket to ``max_distance_bps``: C(d) = notional force-executed if the
price reaches distance d; D(d) = book depth between the mark and d (what absorbs it), and
never less than the depth within ``min_band_bps`` of the mark (forced orders hit the top
of the book first; a band at the mark itself would otherwise have no depth at all).

- pressure: the band (mark .. d) with the largest C/D, among those with C >=
  ``min_cluster_notional``, has C/D >= ``factor``;
- density (clustering on the buckets): the densest ``density_band_bps`` band holds
  ``density_factor`` x the average band notional of the scanned range (and
  ``min_cluster_notional``), with C/D >= ``factor`` x ``density_relax``.

With ``contagion``, a side under pressure also looks at the other cross positions of the
accounts in its band: liquidated on this symbol, they lose the collateral behind those
too, and the venue closes them at market. A linked symbol where such flow in that
direction reaches ``min_cluster_notional`` and ``factor`` x the depth within
``critical_distance_bps`` of its mark gets its own warning (rule ``contagion``), so the
second leg of a cascade can be flagged before the first forced liquidation. Off by default:
it also flags the everyday cross positions of accounts caught in any cluster, which is
true but noisy where the venue closes only the position that failed.

Both are about clusters, so each must still hold without the band's largest account (one
whale nearing its own liquidation price is not a cluster of them).

Either also needs the side's smoothed pressure log1p(max C/(D + min_cluster_notional))
to sit ``z_threshold`` above its own baseline (river EW stats, protected learning, std
floored at ``STD_FLOOR``): a structurally thin symbol alarms when it gets worse, not forever. Warm-up: no anomaly
before ``warmup_ticks`` ticks and ``min_samples`` evaluations of the side.

Severity: info for a dense cluster alone; warning for pressure; critical for pressure
with C/D >= ``critical_factor`` or a band within ``critical_distance_bps`` of the mark.
Re-arm per (symbol, side): one anomaly per episode, again only on escalation; a new
episode after ``rearm_ms`` clear. An unreliable book (sequence gap, resync) is never
evaluated: its depth is a hole, not a thin book (``feed_gap`` reports the gap).

Position feeds are our own exchange's; public liquidation prints (``liquidation``
events) are reported alongside as observed forced flow, a lower bound on public venues.

>>> from monitor.state import MarketState
>>> ThinBookCluster().on_tick(1_732_400_000_250, MarketState())
[]
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections import deque

import msgspec

from detectors.base import Detector, DetectorConfig
from detectors.baseline import Baseline
from detectors.latch import Latch
from monitor.events import Account, Anomaly, Liquidation, Mark, Position
from monitor.state import MarketState
from monitor.state.liquidation import (
    DEFAULT_TIERS, Tiers, divergence_bps, liquidation_price, maintenance_margin, parse_tiers,
)
from monitor.state.slots import SlotLRU, grow, grow_by

FORCED_WINDOW_MS = 60_000  # observed liquidation prints are reported over this window
MAX_DIRTY = 200_000  # accounts waiting for a tick's recompute; past it the oldest is recomputed at once
STD_FLOOR = 0.2  # floor under the baseline std of log1p(pressure): a 1.5x wiggle is not 4 sigma
# An account's contribution to one (symbol, side, bucket) packed into one int — an account
# holding one position costs one int in the map, not a tuple of tuples (~100 B less each).
# Buckets are signed (prices below 1 have negative log buckets), so they are offset.
_OFFSET = 1 << 39
_MASK = (1 << 40) - 1


def _pack(sid: int, short: bool, k: int) -> int:
    return (((sid << 1) | short) << 40) | (k + _OFFSET)


def _unpack(code: int) -> tuple[int, bool, int]:
    return code >> 41, bool((code >> 40) & 1), (code & _MASK) - _OFFSET


class ThinBookClusterConfig(DetectorConfig, kw_only=True):
    bucket_bps: float = 5.0  # resolution of the liquidation-price buckets
    max_distance_bps: float = 500.0  # how far from the mark bands are scanned, each side
    factor: float = 1.0  # forced notional within a band / depth absorbing it must reach this
    min_band_bps: float = 10.0  # a band's absorbing depth is at least the depth within this of the mark
    critical_factor: float = 3.0  # ... x factor => critical
    critical_distance_bps: float = 100.0  # a qualifying band this close to the mark => critical
    min_cluster_notional: float = 250_000.0  # a band must hold at least this much forced notional
    density_band_bps: float = 25.0  # width of the bands the density rule compares
    density_factor: float = 4.0  # dense: a band with this x the average band notional in range
    density_relax: float = 0.5  # ... and C/D >= factor x this
    z_threshold: float = 3.0  # pressure vs the side's own baseline (log space)
    warmup_ticks: int = 240  # ticks before any anomaly on a symbol
    min_samples: int = 20  # evaluations of the side's baseline before any anomaly
    fading: float = 0.02  # EW weight of the newest evaluation in the baseline
    readmit_ticks: int = 2_400  # evaluations anomalous in a row after which the level is learned
    eval_ms: int = 1_000  # evaluate at most this often when buckets or mark changed (else every 4 x this)
    taker_fee: float = 0.0005  # fee charged on the forced close
    include_funding: bool = True  # the payment due at the next funding time counts
    default_tiers: list[tuple[float, float]] = msgspec.field(
        default_factory=lambda: [(c, r) for c, r in DEFAULT_TIERS[:-1]] + [(1e18, DEFAULT_TIERS[-1][1])])
    tiers: dict[str, list[tuple[float, float]]] = {}  # per symbol: [[notional up to, maintenance rate], ...]
    divergence_bps: float = 50.0  # venue liq_price this far from ours counts as divergent
    max_accounts: int = 2_000_000  # accounts whose contributions are kept (LRU; evicted ones are removed)
    top_accounts: int = 5  # accounts named in detail
    rearm_ms: int = 60_000  # an episode ends after the condition is clear this long
    escalation: float = 2.0  # inside an episode, re-fire at this x the last score (or higher severity)
    contagion: bool = False  # a pressure band also flags the cross positions it would drag on other symbols

    def __post_init__(self) -> None:
        parse_tiers(self.default_tiers)
        for rows in self.tiers.values():
            parse_tiers(rows)
        if self.bucket_bps <= 0 or self.max_distance_bps < self.bucket_bps:
            raise ValueError("need 0 < bucket_bps <= max_distance_bps")


class _Side:
    """One side of a symbol. ``members`` maps a bucket to its accounts: most buckets hold one,
    stored as the account id alone (the book's string: no container, no float; its notional
    is in the account's contribution record), two or more as a dict account -> notional."""

    __slots__ = ("hist", "members", "base")

    def __init__(self, cfg: ThinBookClusterConfig) -> None:
        self.hist: dict[int, float] = {}  # bucket -> forced notional
        self.members: dict[int, str | dict[str, float]] = {}  # bucket -> account, or account -> notional
        self.base = Baseline(cfg.fading, cfg.min_samples, STD_FLOOR, cfg.readmit_ticks)


class _Sym:
    __slots__ = ("long", "short", "changed", "last_eval", "ticks", "forced", "computed", "divergent",
                 "approx_cross", "unreliable_evals")

    def __init__(self, cfg: ThinBookClusterConfig) -> None:
        self.long, self.short = _Side(cfg), _Side(cfg)
        self.changed = True
        self.last_eval = 0
        self.ticks = 0
        self.forced: deque[tuple[int, float]] = deque(maxlen=4096)  # observed liquidation prints
        self.computed = 0  # liquidation prices computed (with a venue price to compare)
        self.divergent = 0  # ... of which the venue's differs by more than divergence_bps
        self.approx_cross = 0  # cross positions computed as isolated (equity unknown)
        self.unreliable_evals = 0


class ThinBookCluster(Detector):
    name = "thin_book_cluster"
    Config = ThinBookClusterConfig
    consumes = (Position, Account, Mark, Liquidation)
    max_dirty = MAX_DIRTY  # accounts waiting for the tick's recompute (class default: old checkpoints resume)
    early_recomputes = 0
    check_params = [{}, {"warmup_ticks": 8, "min_samples": 3, "min_cluster_notional": 1_000.0, "eval_ms": 250,
                         "max_accounts": 64, "rearm_ms": 1_000, "factor": 0.2, "z_threshold": 1.5,
                         "contagion": True},
                    {"warmup_ticks": 4, "min_samples": 2, "bucket_bps": 20.0, "max_distance_bps": 2_000.0,
                     "include_funding": False, "max_accounts": 4, "z_threshold": 0.5, "min_cluster_notional": 10.0,
                     "tiers": {"BTC-PERP": [(10_000.0, 0.01), (1e12, 0.02)]}}]

    def __init__(self, config: ThinBookClusterConfig | None = None, max_dirty: int = MAX_DIRTY) -> None:
        super().__init__(config)
        self.max_dirty = max_dirty
        cfg = self.config
        self._lb = math.log1p(cfg.bucket_bps / 1e4)
        self._nb = int(math.ceil(cfg.max_distance_bps / cfg.bucket_bps))
        self._tiers: dict[str, Tiers] = {s: parse_tiers(r) for s, r in cfg.tiers.items()}
        self._default_tiers = parse_tiers(cfg.default_tiers)
        self._syms: dict[str, _Sym] = {}
        self._sym_names: list[str] = []  # symbol id -> name, for packed contributions
        self._sym_ids: dict[str, int] = {}
        # contributing accounts, LRU order: account -> slot of its contribution record, the
        # first two (packed code, notional) inline in columns (code -1: none), more in _cx
        self._lru = SlotLRU()
        self._c1, self._n1 = array("q", [-1]), array("d", [0.0])
        self._c2, self._n2 = array("q", [-1]), array("d", [0.0])
        self._cx: dict[int, tuple[tuple[int, float], ...]] = {}  # slot -> all of them, past two
        self._dirty: dict[str, None] = {}
        self._marked: set[str] = set()
        self._latch = Latch(cfg.rearm_ms, cfg.escalation)
        self.evicted = 0

    def bounds(self) -> dict[str, tuple[int, int]]:
        return {"accounts": (len(self._lru), self.config.max_accounts),
                "latch": (len(self._latch), self._latch.max_keys),
                "dirty": (len(self._dirty), self.max_dirty)}

    def symbol_maps(self) -> dict[str, int]:
        return {"symbols": len(self._syms), "symbol_ids": len(self._sym_ids), "symbol_names": len(self._sym_names),
                "marked": len(self._marked)}

    # -- events: O(1) ------------------------------------------------------------------
    def on_event(self, ev, state: MarketState) -> None:
        t = type(ev)
        if t is Position or t is Account:
            dirty = self._dirty
            if len(dirty) >= self.max_dirty and ev.account not in dirty:
                # bounded between ticks (event time frozen, a flood): the oldest waiting
                # account is recomputed now instead of at the tick (against the state as it is now)
                oldest = next(iter(dirty))
                del dirty[oldest]
                self._recompute(str(oldest), state)
                self.early_recomputes += 1
            dirty[ev.account] = None
        elif t is Mark:
            self._marked.add(ev.symbol)
        else:  # Liquidation
            s = self._syms.get(ev.symbol)
            if s is None:
                s = self._syms[ev.symbol] = _Sym(self.config)
            s.forced.append((ev.ts, ev.price * ev.size))

    # -- ticks -------------------------------------------------------------------------
    def on_tick(self, now: int, state: MarketState) -> list[Anomaly]:
        if self._dirty:
            dirty, self._dirty = self._dirty, {}
            for acct in dirty:
                self._recompute(str(acct), state)
        marked, self._marked = self._marked, set()
        out: list[Anomaly] = []
        eval_ms = self.config.eval_ms
        for symbol in sorted(marked):  # sorted: set order varies between processes
            if symbol not in self._syms:
                self._syms[symbol] = _Sym(self.config)
        for symbol, s in self._syms.items():
            s.ticks += 1
            if now - s.last_eval >= eval_ms and (s.changed or symbol in marked or now - s.last_eval >= 4 * eval_ms):
                s.changed = False
                s.last_eval = now
                self._evaluate(symbol, s, now, state, out)
        return out

    def tiers(self, symbol: str) -> Tiers:
        return self._tiers.get(symbol, self._default_tiers)

    def _store_contrib(self, i: int, contrib: list) -> None:
        """An account's (bucket code, notional) pairs in slot ``i``: two inline columns, a
        tuple beyond two (few accounts are in more than two buckets)."""
        if len(contrib) > 2:
            self._cx[i] = tuple(contrib)
        else:
            self._c1[i], self._n1[i] = contrib[0]
            if len(contrib) == 2:
                self._c2[i], self._n2[i] = contrib[1]

    def _recompute(self, acct: str, state: MarketState) -> None:
        i = self._lru.get(acct)
        if i is not None:
            old = self._record(i)
            self._lru.remove(acct)
            self._clear(i)
            self._remove(acct, old)
        held = state.accounts.lookup(acct)
        if held is None:
            return
        acct, equity, positions = held  # the book's own string for the id, shared rather than copied
        if not positions:
            return
        for symbol in positions:
            if symbol not in self._syms:
                self._syms[symbol] = _Sym(self.config)
        contrib = []
        for symbol, liq, notional, _venue in self._liquidations(equity, positions, state, True):
            s = self._syms[symbol]
            sid = self._sym_ids.get(symbol)
            if sid is None:
                sid = self._sym_ids[symbol] = len(self._sym_names)
                self._sym_names.append(symbol)
            k = math.floor(math.log(liq) / self._lb)
            short = notional < 0  # a long is a forced sell, a short a forced buy
            side = s.short if short else s.long
            notional = abs(notional)
            side.hist[k] = side.hist.get(k, 0.0) + notional
            code = _pack(sid, short, k)
            m = side.members.get(k)
            if m is None:
                side.members[k] = acct
            elif type(m) is str:
                side.members[k] = {m: self._member_n(m, code), acct: 0.0 + notional}
            else:
                m[acct] = m.get(acct, 0.0) + notional
            s.changed = True
            contrib.append((code, notional))
        if contrib:
            lru = self._lru
            i = lru.add(acct)
            if i >= len(self._c1):  # columns grow by blocks
                n = grow_by(i)
                grow(self._c1, n, -1)
                grow(self._n1, n, 0.0)
                grow(self._c2, n, -1)
                grow(self._n2, n, 0.0)
            self._store_contrib(i, contrib)
            if len(lru) > self.config.max_accounts:
                gone, j = lru.pop_oldest()
                items = self._record(j)
                self._clear(j)
                self._remove(gone, items)
                self.evicted += 1

    def _record(self, i: int) -> tuple[tuple[int, float], ...]:
        """An account's contributions: ((packed code, notional), ...)."""
        x = self._cx.get(i)
        if x is not None:
            return x
        if self._c2[i] >= 0:
            return ((self._c1[i], self._n1[i]), (self._c2[i], self._n2[i]))
        return ((self._c1[i], self._n1[i]),)

    def _clear(self, i: int) -> None:
        self._c1[i] = self._c2[i] = -1
        self._n1[i] = self._n2[i] = 0.0
        self._cx.pop(i, None)

    def _member_n(self, acct: str, code: int) -> float:
        """The notional an account put in one (symbol, side, bucket), from its record."""
        i = self._lru.index[acct]
        if self._c1[i] == code:
            return self._n1[i]
        if self._c2[i] == code:
            return self._n2[i]
        for c, n in self._cx[i]:
            if c == code:
                return n
        raise KeyError((acct, code))

    def _members(self, sid: int, short: bool, side: _Side, k: int):
        """(account, notional) in one bucket, in the order they joined it."""
        m = side.members.get(k)
        if m is None:
            return ()
        if type(m) is str:
            return ((m, self._member_n(m, _pack(sid, short, k))),)
        return m.items()

    def _remove(self, acct: str, items) -> None:
        for code, _n in items:
            sid, short, k = _unpack(code)
            s = self._syms[self._sym_names[sid]]
            side = s.short if short else s.long
            m = side.members.get(k)
            if m is None:
                continue
            if type(m) is str:
                if m == acct:
                    del side.members[k]
                    side.hist.pop(k, None)  # exact zero: no float residue
                else:
                    side.hist[k] -= 0.0
            else:
                n = m.pop(acct, 0.0)
                if not m:
                    del side.members[k]
                    side.hist.pop(k, None)
                else:
                    if len(m) == 1:  # one left: the account id alone
                        side.members[k] = next(iter(m))
                    side.hist[k] -= n
            s.changed = True

    def __getstate__(self) -> dict:
        d = self.__dict__.copy()
        top = self._lru.top  # the record columns without the unused tails of their blocks
        for k in ("_c1", "_n1", "_c2", "_n2"):
            d[k] = d[k][:top]
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        old = d.get("_contrib")
        if old is None:
            return
        # a checkpoint from before the contribution records: OrderedDict account -> code(s),
        # members as dicts account -> notional
        del self.__dict__["_contrib"]
        self._lru = SlotLRU()
        self._c1, self._n1 = array("q", [-1]), array("d", [0.0])
        self._c2, self._n2 = array("q", [-1]), array("d", [0.0])
        self._cx = {}
        for acct, items in old.items():
            contrib = []
            for code in (items,) if type(items) is int else items:
                sid, short, k = _unpack(code)
                s = self._syms[self._sym_names[sid]]
                contrib.append((code, (s.short if short else s.long).members[k][acct]))
            i = self._lru.add(acct)
            for col, v in ((self._c1, -1), (self._n1, 0.0), (self._c2, -1), (self._n2, 0.0)):
                col.append(v)
            self._store_contrib(i, contrib)
        for s in self._syms.values():
            for side in (s.long, s.short):
                for k, m in side.members.items():
                    if len(m) == 1:
                        side.members[k] = next(iter(m))

    def liquidations(self, acct: str, state: MarketState, count: bool = False):
        """(symbol, our liquidation price, signed notional at it, venue liq_price) per position."""
        held = state.accounts.lookup(acct)
        if held is None:
            return []
        return self._liquidations(held[1], held[2], state, count)

    def _liquidations(self, equity: float | None, positions, state: MarketState, count: bool):
        cfg = self.config
        marks, tiers_of, default = state.marks, self._tiers.get, self._default_tiers
        rows = []
        for symbol, p in positions.items():
            m = marks.get(symbol)
            px = m.mark if m is not None and m.mark is not None else state.price(symbol)
            if px is not None and p.size:
                rows.append((symbol, p, px, tiers_of(symbol, default), m))
        cross_mm = 0.0
        mms: dict[str, float] = {}
        if equity is not None and len(rows) > 1:  # other positions' maintenance: only with several
            for symbol, p, px, tiers, _ in rows:
                if not p.isolated:
                    mms[symbol] = mm = maintenance_margin(p.size, px, tiers)
                    cross_mm += mm
        out = []
        fee, with_funding = cfg.taker_fee, cfg.include_funding
        for symbol, p, px, tiers, m in rows:
            rate = m.funding_rate if with_funding and m is not None else None
            funding = p.size * px * rate if rate else 0.0  # funding_payment, inlined
            if p.isolated or equity is None:
                liq = liquidation_price(p.size, p.entry, p.leverage, tiers=tiers, fee=fee, funding=funding)
                if count and not p.isolated:
                    self._syms[symbol].approx_cross += 1
            else:
                liq = liquidation_price(p.size, p.entry, p.leverage, tiers=tiers, fee=fee, funding=funding,
                                        cross_equity=equity, mark=px, other_mm=cross_mm - mms.get(symbol, 0.0))
            if liq is None:
                continue
            if count and p.liq_price:
                div = divergence_bps(liq, p.liq_price)
                if div is not None:
                    s = self._syms[symbol]
                    s.computed += 1
                    s.divergent += abs(div) > cfg.divergence_bps
            out.append((symbol, liq, p.size * liq, p.liq_price))
        return out

    # -- evaluation --------------------------------------------------------------------
    def _evaluate(self, symbol: str, s: _Sym, now: int, state: MarketState, out: list[Anomaly]) -> None:
        book = state.books.get(symbol)
        mark = state.marks.get(symbol)
        if book is None or mark is None or mark.mark is None:
            return
        if not book.reliable:
            s.unreliable_evals += 1
            return  # depth is a hole during a resync: say nothing rather than "thin"
        for long in (True, False):
            side = s.long if long else s.short
            if not side.hist and not side.base.n:
                continue
            scan = self._scan(side.hist, mark.mark, book, long)
            j = self._judge(symbol, s, side, long, scan, now, state, mark.mark, out)
            if j is not None and self.config.contagion:
                self._contagion(symbol, side, long, scan[0], j, now, state, out)

    def _scan(self, hist: dict[int, float], mark: float, book, long: bool):
        """Walk out from the mark over the non-empty buckets (C/D and band sums peak at one).

        Returns (km, candidates, best, smooth, dense) with candidates [(j, C_j, D_j)]: C_j the
        forced notional from the mark bucket out to bucket j (distance), D_j the depth between
        the mark and that bucket's far edge; best = (index, C/D) of the highest C/D among
        those with C >= min_cluster_notional; dense = (index, band notional, avg band).
        """
        cfg, lb, nb = self.config, self._lb, self._nb
        km = math.floor(math.log(mark) / lb)
        if len(hist) <= nb + 1:
            js = sorted(km - k if long else k - km for k in hist)
            js = [j for j in js if 0 <= j <= nb]
        else:
            js = [j for j in range(nb + 1) if (km - j if long else km + j) in hist]
        floor = cfg.min_cluster_notional
        if not js:
            return km, [], (-1, 0.0), 0.0, (-1, 0.0, 0.0)
        levels = book.sorted_levels()[0 if long else 1]  # sorted only when something is in range
        step = 1.0 + cfg.bucket_bps / 1e4
        edge0 = math.exp(km * lb) if long else math.exp((km + 1) * lb)
        cands: list[tuple[int, float, float]] = []
        c = d = 0.0
        li, n_levels = 0, len(levels)
        # the top of the book always absorbs: depth within min_band_bps of the mark
        top_edge = mark * (1 - cfg.min_band_bps / 1e4) if long else mark * (1 + cfg.min_band_bps / 1e4)
        while li < n_levels and (levels[li][0] >= top_edge if long else levels[li][0] <= top_edge):
            d += levels[li][0] * levels[li][1]
            li += 1
        best_i, best_r, smooth = -1, 0.0, 0.0
        for j in js:
            c += hist[km - j if long else km + j]
            if long:  # bids at or above the lower edge of bucket km - j absorb
                edge = edge0 / step ** j
                while li < n_levels and levels[li][0] >= edge:
                    d += levels[li][0] * levels[li][1]
                    li += 1
            else:  # asks at or below the upper edge of bucket km + j absorb
                edge = edge0 * step ** j
                while li < n_levels and levels[li][0] <= edge:
                    d += levels[li][0] * levels[li][1]
                    li += 1
            r_s = c / (d + floor)
            if r_s > smooth:
                smooth = r_s
            if c >= floor:
                r = c / d if d > 0 else math.inf
                if r > best_r:
                    best_i, best_r = len(cands), r
            cands.append((j, c, d))
        # density: the band of wb buckets ending at each candidate, against the average band
        wb = max(1, int(round(cfg.density_band_bps / cfg.bucket_bps)))
        dense_i, dense_n, lo = -1, 0.0, 0
        for i, (j, cj, _) in enumerate(cands):
            while cands[lo][0] <= j - wb:
                lo += 1
            n = cj - (cands[lo - 1][1] if lo else 0.0)
            if n > dense_n:
                dense_i, dense_n = i, n
        return km, cands, (best_i, best_r), smooth, (dense_i, dense_n, c * wb / (nb + 1))

    def _judge(self, symbol, s, side: _Side, long: bool, scan, now: int, state, mark: float, out) -> int | None:
        """Decide the side; the qualifying band's far bucket j when the pressure rule holds."""
        cfg = self.config
        km, cands, (bi, r), smooth, (di, dn, avg_band) = scan
        z = side.base.observe(math.log1p(smooth), protect_above=cfg.z_threshold, one_sided=True)
        if s.ticks < cfg.warmup_ticks or not side.base.ready or z < cfg.z_threshold:
            return None
        pressure = bi >= 0 and r >= cfg.factor
        dense = (di >= 0 and dn >= cfg.min_cluster_notional and dn >= cfg.density_factor * avg_band
                 and dn >= cfg.factor * cfg.density_relax * cands[di][2])
        if not (pressure or dense):
            return None
        lb, wb = self._lb, max(1, int(round(cfg.density_band_bps / cfg.bucket_bps)))
        i = bi if pressure else di
        j, c_j, d_j = cands[i]
        j0 = 0 if pressure else max(0, j - wb + 1)
        buckets = range(km - j, km - j0 + 1) if long else range(km + j0, km + j + 1)
        # a cluster is many accounts: the rule must still hold without the band's largest one
        # (one whale nearing its own liquidation is that account's risk, not a cluster)
        top = self._top(symbol, long, side, buckets, max(1, cfg.top_accounts))
        largest = top[0][1] if top else 0.0
        band_n = sum(side.hist.get(k, 0.0) for k in buckets)
        if pressure:
            rest = c_j - largest
            if rest < cfg.min_cluster_notional or (d_j > 0 and rest < cfg.factor * d_j):
                return None
        elif band_n - largest < cfg.min_cluster_notional or band_n - largest < cfg.density_factor * avg_band \
                or band_n - largest < cfg.factor * cfg.density_relax * d_j:
            return None
        found = j if pressure else None
        far = math.exp((km - j) * lb) if long else math.exp((km + j + 1) * lb)
        dist = abs(far - mark) / mark * 1e4
        if pressure:
            critical = r >= cfg.critical_factor * cfg.factor or dist <= cfg.critical_distance_bps
            severity = "critical" if critical else "warning"
            score = min(r, 1e6)
        else:
            severity = "info"
            score = min(dn / d_j, 1e6) if d_j > 0 else 1e6
        if not self._latch.fire((symbol, "long" if long else "short"), now, score, severity):
            return found
        near = math.exp((km - j0 + 1) * lb) if long else math.exp((km + j0) * lb)
        near = min(mark, near) if long else max(mark, near)
        top = top[: cfg.top_accounts]
        venue = {}
        for acct, _ in top:
            for sym, liq, _n, v in self.liquidations(acct, state):
                if sym == symbol:
                    venue[acct] = (liq, v)
        accounts = []
        for a, n in top:
            ours, theirs = venue.get(a, (None, None))
            dv = divergence_bps(ours, theirs)
            accounts.append({"account": str(a), "notional": round(n, 2),
                             "liq_price": round(ours, 8) if ours is not None else None,
                             "venue_liq_price": theirs, "divergence_bps": round(dv, 1) if dv is not None else None})
        forced = sum(n for ts, n in s.forced if ts > now - FORCED_WINDOW_MS)
        dj_, dc, _ = cands[di] if di >= 0 else (0, 0.0, 0.0)
        detail = {
            "side": "long" if long else "short",
            "forced_flow": "sell into bids below the mark" if long else "buy into asks above the mark",
            "rule": "pressure" if pressure else "density",
            "mark": mark,
            "band": {"from_price": round(near, 8), "to_price": round(far, 8),
                     "distance_bps": round(dist, 1), "near_distance_bps": round(abs(near - mark) / mark * 1e4, 1)},
            "cluster_notional": round(band_n, 2),
            "largest_account_share": round(largest / band_n, 4) if band_n > 0 else None,
            "forced_notional_mark_to_band": round(c_j, 2),
            "absorbing_depth": round(d_j, 2),
            "ratio": round(c_j / d_j, 3) if d_j > 0 else None,
            "densest_band": {"distance_bps": round((dj_ + 1) * cfg.bucket_bps, 1), "notional": round(dn, 2),
                             "avg_band_notional": round(avg_band, 2), "width_bps": wb * cfg.bucket_bps}
            if di >= 0 else None,
            "z": round(z, 3),
            "baseline_log1p_pressure": side.base.snapshot(),
            "thresholds": {"factor": cfg.factor, "critical_factor": cfg.critical_factor,
                           "min_cluster_notional": cfg.min_cluster_notional, "z_threshold": cfg.z_threshold,
                           "density_factor": cfg.density_factor, "critical_distance_bps": cfg.critical_distance_bps},
            "crossed": ("forced notional between the mark and the band exceeds factor x the depth absorbing it"
                        if pressure else "a dense liquidation cluster sits where the book is thin"),
            "top_accounts": accounts,
            "liq_price_check": {"computed_with_venue_price": s.computed, "divergent": s.divergent,
                                "divergence_bps": cfg.divergence_bps, "cross_as_isolated": s.approx_cross},
            "observed_forced_notional_60s": round(forced, 2),
            "note": "liquidation prices computed from positions; observed liquidation prints are a lower bound "
                    "on public feeds",
        }
        out.append(Anomaly.make("thin_book_cluster", now, score, severity, symbol=symbol, detail=detail))
        return found

    def _contagion(self, symbol: str, side: _Side, long: bool, km: int, j: int, now: int, state, out) -> None:
        """Forced flow this band would set off on other symbols through shared collateral.

        An account liquidated on ``symbol`` under cross margin loses the collateral behind
        its other cross positions too: the venue closes them at market, so their flow (same
        direction: longs are sold) hits those books when *this* band is reached, whatever
        their own liquidation prices say. Per linked symbol: that notional, against the
        depth within ``critical_distance_bps`` of its mark.
        """
        cfg = self.config
        linked: dict[str, list] = {}  # symbol -> [notional, accounts]
        accounts = state.accounts
        for b in range(km - j, km + 1) if long else range(km, km + j + 1):
            m = side.members.get(b)
            if not m:
                continue
            for acct in (m,) if type(m) is str else m:
                st = accounts.get(acct)
                if st is None:
                    continue
                positions = st.positions
                here = positions.get(symbol)
                if here is None or here.isolated or len(positions) < 2:
                    continue
                for other, p in positions.items():
                    if other == symbol or p.isolated or (p.size > 0) != long or not p.size:
                        continue
                    px = state.price(other)
                    if px is None:
                        continue
                    row = linked.get(other)
                    if row is None:
                        row = linked[other] = [0.0, 0]
                    row[0] += abs(p.size) * px
                    row[1] += 1
        for other in sorted(linked):
            notional, n = linked[other]
            if notional < cfg.min_cluster_notional:
                continue
            book = state.books.get(other)
            if book is None or not book.reliable:
                continue
            bids, asks = book.depth_within_bps(cfg.critical_distance_bps)
            depth = bids if long else asks
            ratio = notional / depth if depth > 0 else math.inf
            if ratio < cfg.factor:
                continue
            score = min(ratio, 1e6)
            if not self._latch.fire((other, "long" if long else "short", "contagion"), now, score, "warning"):
                continue
            out.append(Anomaly.make("thin_book_cluster", now, score, "warning", symbol=other, detail={
                "side": "long" if long else "short",
                "rule": "contagion",
                "forced_flow": ("sell into bids" if long else "buy into asks") + f" when {symbol}'s band is reached",
                "source_symbol": symbol,
                "linked_notional": round(notional, 2),
                "linked_accounts": n,
                "depth_within_critical_distance": round(depth, 2),
                "critical_distance_bps": cfg.critical_distance_bps,
                "ratio": round(ratio, 3) if depth > 0 else None,
                "thresholds": {"min_cluster_notional": cfg.min_cluster_notional, "factor": cfg.factor},
                "crossed": f"cross positions of accounts in {symbol}'s forced-flow band, liquidated with them",
            }))

    def _top(self, symbol: str, long: bool, side: _Side, buckets, k: int) -> list[tuple[str, float]]:
        totals: dict[str, float] = {}
        sid = self._sym_ids.get(symbol)
        if sid is None:
            return []
        for b in buckets:
            for acct, n in self._members(sid, not long, side, b):
                totals[acct] = totals.get(acct, 0.0) + n
        return heapq.nlargest(k, totals.items(), key=lambda kv: (kv[1], str(kv[0])))
