"""thin_book_cluster: more forced flow parked in a band than the book there can absorb.

Liquidation prices come from ``monitor.state.liquidation``: maintenance-margin tiers
(``tiers`` per symbol, else ``default_tiers``), the taker fee charged on the forced close
(``taker_fee``), the funding payment due at the next funding time, and for cross positions
the account's shared equity and the maintenance margin of its other cross positions (a
cross position of an account whose equity is unknown is treated as isolated at its
leverage). The venue's ``liq_price`` is a cross-check (its divergence from ours is reported
for the accounts named in an anomaly and counted per symbol), and stands in for ours only
where ours is already crossed while the venue keeps the position open: our inputs miss
something for that account (counted as ``venue_fallback``).

Per symbol, liquidation notional sits in log-price buckets of ``bucket_bps`` (longs and
shorts apart, with the sum of squared account notionals per bucket), updated
incrementally: a position or account event marks the account dirty; at the next tick its
old contributions are taken out and new ones put in (at most ``max_dirty`` accounts wait:
past that the oldest is recomputed at once). A symbol is evaluated at most once per
``eval_ms`` when its buckets or mark changed (and every 4 x ``eval_ms`` regardless: the
book moves too). Longs liquidate into the bids below the mark, shorts into the asks above
it, out to ``max_distance_bps``.

The rule is a level. A band runs from a non-empty bucket at distance a to one at b (at
most ``max_band_bps`` wide: wider is a ladder, not a cluster); C = the forced notional
whose liquidation prices lie in it, D = the book depth across it (never over less than
``min_band_bps``: levels are discrete). When price reaches the band, its forced orders
execute into that depth: with C >= ``factor`` x D they carry the price through it. A band
qualifies when C >= ``min_cluster_notional`` and C >= ``factor`` x D still hold without the
band's largest account, and that remainder is spread over at least ``min_accounts``
effective accounts (inverse Herfindahl of the notionals): a few large accounts nearing
their own liquidation are their risk, not a crowd. A band starting at the mark is the
plain "forced notional between the mark and the band" rule; a band further out sees a
cluster that a deep book near the mark would hide from it. The side fires on its
qualifying band with the highest C/D, whatever its history.

History sets the severity, never the verdict: each side's log pressure log1p(max C / (D +
``min_cluster_notional``)) over its bands feeds an EW baseline with a time constant of
``baseline_tau_ms`` of event time (std floored at ``STD_FLOOR``), which stops learning
while the side's episode is open (a cluster forming must not teach it that clusters are
normal) and counts after ``baseline_warmup_ms`` and ``min_samples`` evaluations. Severity:
one step for the level being severe (C/D >= ``critical_factor`` x ``factor``, or the band
starting within ``critical_distance_bps`` of the mark), one for it being unusual for the
side (z >= ``z_threshold``, or the baseline still warming up): info, warning, critical.
Before ``warmup_ticks`` ticks of a symbol (state still filling) nothing fires.

With ``contagion``, a side under pressure also looks at the other cross positions of the
accounts from the mark out to its band: liquidated on this symbol, they lose the
collateral behind those too, and the venue closes them at market. A linked symbol where
such flow in that direction reaches ``min_cluster_notional`` and ``factor`` x the depth
within ``critical_distance_bps`` of its mark gets its own warning (rule ``contagion``), so
the second leg of a cascade can be flagged before the first forced liquidation. Off by
default: it also flags the everyday cross positions of accounts caught in any cluster,
which is true but noisy where the venue closes only the position that failed.

One anomaly per episode and (symbol, side): again only when the level escalates (severe
where it was not; with ``escalation`` > 0 also at that x the score last fired); a new
episode after ``rearm_ms`` clear. The detail names the band, its accounts (count,
effective count, the top ``top_accounts`` with both liquidation prices) and the z. An
unreliable book (sequence gap, resync) is never evaluated: its depth is a hole, not a
thin book (``feed_gap`` reports the gap).

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
    min_band_bps: float = 25.0  # a band's depth is never taken over less than this width (levels are discrete)
    max_band_bps: float = 200.0  # a band wider than this is a ladder, not a cluster
    min_accounts: float = 20.0  # effective accounts (1 / Herfindahl) in the band, its largest left out
    critical_factor: float = 3.0  # ... x factor => critical
    critical_distance_bps: float = 100.0  # a qualifying band starting this close to the mark => critical
    min_cluster_notional: float = 250_000.0  # a band must hold at least this much forced notional
    density_band_bps: float = 25.0  # width of the densest band reported in detail
    density_factor: float = 4.0  # no longer used (the band rule covers dense clusters); accepted for old configs
    density_relax: float = 0.5  # no longer used; accepted for old configs
    z_threshold: float = 3.0  # pressure vs the side's own baseline (log space): severity only, never a veto
    warmup_ticks: int = 240  # ticks before any anomaly on a symbol (state still filling)
    baseline_tau_ms: int = 1_800_000  # time constant of the side's pressure baseline, in event time
    baseline_warmup_ms: int = 600_000  # event time a side's baseline learns before its z counts
    min_samples: int = 20  # evaluations of a side before its baseline's z counts (with baseline_warmup_ms)
    fading: float = 0.02  # no longer used (baseline_tau_ms); accepted for old configs
    readmit_ticks: int = 2_400  # no longer used (the baseline never vetoes); accepted for old configs
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
    escalation: float = 0.0  # inside an episode, also re-fire at this x the last score (0: on higher severity only)
    contagion: bool = False  # a pressure band also flags the cross positions it would drag on other symbols

    def __post_init__(self) -> None:
        parse_tiers(self.default_tiers)
        for rows in self.tiers.values():
            parse_tiers(rows)
        if self.bucket_bps <= 0 or self.max_distance_bps < self.bucket_bps:
            raise ValueError("need 0 < bucket_bps <= max_distance_bps")
        if not 0 < self.min_band_bps <= self.max_band_bps:
            raise ValueError("need 0 < min_band_bps <= max_band_bps")
        if self.baseline_tau_ms <= 0 or self.baseline_warmup_ms < 0:
            raise ValueError("need baseline_tau_ms > 0 and baseline_warmup_ms >= 0")
        if self.factor <= 0 or self.min_accounts < 0:
            raise ValueError("need factor > 0 and min_accounts >= 0")


class _SlowBaseline:
    """EW mean and variance of one side's log pressure with a time constant in event time
    (``tau_ms``: the weight of an observation ``dt`` after the last is 1 - exp(-dt / tau)),
    a std floor, and an explicit warm-up (``warmup_ms`` of event time and ``min_n``
    observations). It does not learn while the side's episode is open: a cluster forming
    must not teach it that clusters are normal.

    >>> b = _SlowBaseline(60_000, 0, 1)
    >>> for t in range(0, 600_000, 1_000):
    ...     b.learn(0.1, t)
    >>> round(b.z(0.1 + 3 * STD_FLOOR), 2), b.ready(600_000)
    (3.0, True)
    """

    __slots__ = ("mean", "var", "n", "first", "last", "tau_ms", "warmup_ms", "min_n")

    def __init__(self, tau_ms: int, warmup_ms: int, min_n: int) -> None:
        self.mean = self.var = 0.0
        self.n = 0
        self.first = self.last = None
        self.tau_ms, self.warmup_ms, self.min_n = tau_ms, warmup_ms, min_n

    def learn(self, x: float, now: int) -> None:
        if self.n == 0:
            self.mean, self.first = x, now
        else:
            a = 1.0 - math.exp(-max(now - self.last, 0) / self.tau_ms)
            d = x - self.mean
            self.mean += a * d
            self.var = (1.0 - a) * (self.var + a * d * d)
        self.last = now
        self.n += 1

    def ready(self, now: int) -> bool:
        return self.n >= self.min_n and self.first is not None and now - self.first >= self.warmup_ms

    def std(self) -> float:
        return max(math.sqrt(max(self.var, 0.0)), STD_FLOOR)

    def z(self, x: float) -> float:
        return (x - self.mean) / self.std() if self.n else 0.0

    def snapshot(self) -> dict[str, float]:
        return {"mean": round(self.mean, 6), "std": round(self.std(), 6), "n": self.n}


class _Side:
    """One side of a symbol. ``members`` maps a bucket to its accounts: most buckets hold one,
    stored as the account id alone (the book's string: no container, no float; its notional
    is in the account's contribution record), two or more as a dict account -> notional."""

    __slots__ = ("hist", "sq", "members", "base")

    def __init__(self, cfg: ThinBookClusterConfig) -> None:
        self.hist: dict[int, float] = {}  # bucket -> forced notional
        self.sq: dict[int, float] = {}  # bucket -> sum of its accounts' squared notionals (concentration)
        self.members: dict[int, str | dict[str, float]] = {}  # bucket -> account, or account -> notional
        self.base = _SlowBaseline(cfg.baseline_tau_ms, cfg.baseline_warmup_ms, cfg.min_samples)


class _Sym:
    __slots__ = ("long", "short", "changed", "last_eval", "ticks", "forced", "computed", "divergent",
                 "approx_cross", "unreliable_evals", "venue_fallback")

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
        self.venue_fallback = 0  # positions placed at the venue's liq_price: ours was already crossed


class ThinBookCluster(Detector):
    name = "thin_book_cluster"
    Config = ThinBookClusterConfig
    consumes = (Position, Account, Mark, Liquidation)
    max_dirty = MAX_DIRTY  # accounts waiting for the tick's recompute (class default: old checkpoints resume)
    early_recomputes = 0
    check_params = [{}, {"warmup_ticks": 8, "min_samples": 3, "min_cluster_notional": 1_000.0, "eval_ms": 250,
                         "max_accounts": 64, "rearm_ms": 1_000, "factor": 0.2, "z_threshold": 1.5,
                         "contagion": True, "min_accounts": 2.0, "baseline_warmup_ms": 5_000},
                    {"warmup_ticks": 4, "min_samples": 2, "bucket_bps": 20.0, "max_distance_bps": 2_000.0,
                     "include_funding": False, "max_accounts": 4, "z_threshold": 0.5, "min_cluster_notional": 10.0,
                     "min_accounts": 0.0, "min_band_bps": 20.0, "max_band_bps": 400.0, "escalation": 2.0,
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
            side.sq[k] = side.sq.get(k, 0.0) + notional * notional
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
                    side.sq.pop(k, None)
                else:
                    side.hist[k] -= 0.0
            else:
                n = m.pop(acct, 0.0)
                if not m:
                    del side.members[k]
                    side.hist.pop(k, None)
                    side.sq.pop(k, None)
                else:
                    if len(m) == 1:  # one left: the account id alone
                        one = side.members[k] = next(iter(m))
                        side.hist[k] = m[one]  # exact again: one account's own notional
                        side.sq[k] = m[one] * m[one]
                    else:
                        side.hist[k] -= n
                        side.sq[k] = max(side.sq[k] - n * n, 0.0)
            s.changed = True

    def __getstate__(self) -> dict:
        d = self.__dict__.copy()
        top = self._lru.top  # the record columns without the unused tails of their blocks
        for k in ("_c1", "_n1", "_c2", "_n2"):
            d[k] = d[k][:top]
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self._upgrade_sides()
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

    def _upgrade_sides(self) -> None:
        """A checkpoint from before the band rule: squared notionals per bucket rebuilt from the
        members, the per-evaluation baseline replaced by the event-time one (it learns afresh)."""
        cfg = self.config
        for s in self._syms.values():
            if not hasattr(s, "venue_fallback"):
                s.venue_fallback = 0
            for side in (s.long, s.short):
                if not isinstance(getattr(side, "base", None), _SlowBaseline):
                    side.base = _SlowBaseline(cfg.baseline_tau_ms, cfg.baseline_warmup_ms, cfg.min_samples)
                if not hasattr(side, "sq"):
                    side.sq = {}
                    for k, m in side.members.items():
                        if type(m) is str:
                            side.sq[k] = side.hist.get(k, 0.0) ** 2
                        else:
                            side.sq[k] = sum(n * n for n in m.values())

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
            venue = p.liq_price
            if count and venue:
                div = divergence_bps(liq, venue)
                if div is not None:
                    s = self._syms[symbol]
                    s.computed += 1
                    s.divergent += abs(div) > cfg.divergence_bps
            if venue and (liq >= px > venue if p.size > 0 else liq <= px < venue):
                # ours is already crossed yet the venue keeps the position open: our inputs miss
                # something for this account (equity, collateral); the venue's figure stands in
                liq = venue
                if count:
                    self._syms[symbol].venue_fallback += 1
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
            scan = self._scan(symbol, side, mark.mark, book, long)
            j = self._judge(symbol, s, side, long, scan, now, state, mark.mark, out)
            if j is not None and self.config.contagion:
                self._contagion(symbol, side, long, scan[0], j, now, state, out)

    def _scan(self, symbol: str, side: _Side, mark: float, book, long: bool):
        """The side's bands, from its non-empty buckets within ``max_distance_bps``.

        Returns (km, best, pressure, dense): ``best`` the qualifying band with the highest
        C/D as (ratio, a, b, C, D, largest, effective accounts) with a, b its nearest and
        farthest bucket (distance from the mark bucket), or None; ``pressure`` the side's
        highest C / (D + min_cluster_notional) over bands up to ``max_band_bps`` wide (what
        its baseline learns); ``dense`` the densest ``density_band_bps`` band (far bucket,
        notional) for the detail.
        """
        cfg, lb, nb = self.config, self._lb, self._nb
        km = math.floor(math.log(mark) / lb)
        hist = side.hist
        if len(hist) <= nb + 1:
            js = sorted(km - k if long else k - km for k in hist)
            js = [j for j in js if 0 <= j <= nb]
        else:
            js = [j for j in range(nb + 1) if (km - j if long else km + j) in hist]
        if not js:
            return km, None, 0.0, (-1, 0.0)
        ks = [km - j if long else km + j for j in js]
        ns = [hist[k] for k in ks]
        sqs = [side.sq.get(k, 0.0) for k in ks]
        tops = []  # the largest account's notional per bucket
        for k, n in zip(ks, ns):
            m = side.members.get(k)
            tops.append(n if m is None or type(m) is str else max(m.values()))
        wmin = max(1, int(round(cfg.min_band_bps / cfg.bucket_bps)))
        wmax = max(wmin, int(round(cfg.max_band_bps / cfg.bucket_bps)))
        # cumulative depth from the mark to the far edge of each bucket out to the last one needed
        hi = min(nb, js[-1] + wmin - 1)
        levels = book.sorted_levels()[0 if long else 1]  # sorted only when something is in range
        step = 1.0 + cfg.bucket_bps / 1e4
        edge = math.exp(km * lb) if long else math.exp((km + 1) * lb)
        cum = [0.0] * (hi + 1)
        d, li, n_levels = 0.0, 0, len(levels)
        for j in range(hi + 1):
            if long:  # bids at or above the lower edge of bucket km - j absorb
                while li < n_levels and levels[li][0] >= edge:
                    d += levels[li][0] * levels[li][1]
                    li += 1
                edge /= step
            else:  # asks at or below the upper edge of bucket km + j absorb
                while li < n_levels and levels[li][0] <= edge:
                    d += levels[li][0] * levels[li][1]
                    li += 1
                edge *= step
            cum[j] = d
        floor, factor, min_acc = cfg.min_cluster_notional, cfg.factor, cfg.min_accounts
        best, pressure, m = None, 0.0, len(js)
        for ia in range(m):
            a = js[ia]
            base = cum[a - 1] if a else 0.0
            c = q = mx = 0.0
            for ib in range(ia, m):
                b = js[ib]
                if b - a + 1 > wmax:
                    break
                c += ns[ib]
                q += sqs[ib]
                if tops[ib] > mx:
                    mx = tops[ib]
                b2 = min(max(b, a + wmin - 1), hi)
                dep = cum[b2] - base
                if dep + floor > 0 and c / (dep + floor) > pressure:
                    pressure = c / (dep + floor)
                rest = c - mx  # a cluster is many accounts: it must hold without the band's largest
                if rest < floor or rest < factor * dep or rest <= 0:
                    continue
                rq = q - mx * mx
                neff = rest * rest / rq if rq > 0 else 1.0
                if neff < min_acc:
                    continue
                r = c / dep if dep > 0 else math.inf
                if best is None or r > best[0]:
                    best = (r, a, b, c, dep, mx, neff)
        # the densest density_band_bps band (reported)
        wb = max(1, int(round(cfg.density_band_bps / cfg.bucket_bps)))
        dense, lo, run = (-1, 0.0), 0, 0.0
        for i in range(m):
            run += ns[i]
            while js[lo] <= js[i] - wb:
                run -= ns[lo]
                lo += 1
            if run > dense[1]:
                dense = (js[i], run)
        return km, best, pressure, dense

    def _judge(self, symbol, s, side: _Side, long: bool, scan, now: int, state, mark: float, out) -> int | None:
        """Decide the side; the qualifying band's far bucket when the pressure rule holds.

        The rule is a level: it fires whatever the side's history. The side's baseline
        (z of its log pressure) only sets the severity, and learns only outside episodes.
        """
        cfg = self.config
        km, best, pressure, (dj, dn) = scan
        x = math.log1p(pressure)
        base = side.base
        key = (symbol, "long" if long else "short")
        ready = base.ready(now)
        z = base.z(x) if ready else None
        if not self._latch.active(key, now):  # a cluster forming must not teach it that clusters are normal
            base.learn(x, now)
        if s.ticks < cfg.warmup_ticks or best is None:
            return None
        r, a, b, c_band, d_band, largest, neff = best
        lb = self._lb
        near = math.exp((km - a + 1) * lb) if long else math.exp((km + a) * lb)
        near = min(mark, near) if long else max(mark, near)
        far = math.exp((km - b) * lb) if long else math.exp((km + b + 1) * lb)
        near_bps, dist = abs(near - mark) / mark * 1e4, abs(far - mark) / mark * 1e4
        unusual = z is None or z >= cfg.z_threshold
        severe = r >= cfg.critical_factor * cfg.factor or near_bps <= cfg.critical_distance_bps
        severity = ("info", "warning", "critical")[unusual + severe]
        score = min(r, 1e6)
        # inside an episode only the level escalating re-fires (the ratio past critical_factor, or
        # the band within critical_distance_bps of the mark); z crossing its threshold changes the
        # severity reported, not the count
        if not self._latch.fire(key, now, score, "critical" if severe else "warning"):
            return b
        buckets = range(km - b, km - a + 1) if long else range(km + a, km + b + 1)
        top = self._top(symbol, long, side, buckets, max(1, cfg.top_accounts))
        venue = {}
        for acct, _ in top:
            for sym, liq, _n, v in self.liquidations(acct, state):
                if sym == symbol:
                    venue[acct] = (liq, v)
        accounts = []
        for acct, n in top:
            ours, theirs = venue.get(acct, (None, None))
            dv = divergence_bps(ours, theirs)
            accounts.append({"account": str(acct), "notional": round(n, 2),
                             "liq_price": round(ours, 8) if ours is not None else None,
                             "venue_liq_price": theirs, "divergence_bps": round(dv, 1) if dv is not None else None})
        n_accounts = sum(1 if type(m) is str else len(m) for k in buckets if (m := side.members.get(k)))
        forced = sum(n for ts, n in s.forced if ts > now - FORCED_WINDOW_MS)
        wb = max(1, int(round(cfg.density_band_bps / cfg.bucket_bps)))
        detail = {
            "side": "long" if long else "short",
            "forced_flow": "sell into bids below the mark" if long else "buy into asks above the mark",
            "rule": "pressure",
            "mark": mark,
            "band": {"from_price": round(near, 8), "to_price": round(far, 8),
                     "distance_bps": round(dist, 1), "near_distance_bps": round(near_bps, 1)},
            "cluster_notional": round(c_band, 2),
            "accounts": n_accounts,
            "effective_accounts": round(neff, 1),
            "largest_account_share": round(largest / c_band, 4) if c_band > 0 else None,
            "forced_notional_in_band": round(c_band, 2),
            "absorbing_depth": round(d_band, 2),
            "ratio": round(r, 3) if d_band > 0 else None,
            "densest_band": {"distance_bps": round((dj + 1) * cfg.bucket_bps, 1), "notional": round(dn, 2),
                             "width_bps": wb * cfg.bucket_bps} if dj >= 0 else None,
            "z": round(z, 3) if z is not None else None,
            "usual_for_side": not unusual,
            "baseline_log1p_pressure": base.snapshot(),
            "thresholds": {"factor": cfg.factor, "critical_factor": cfg.critical_factor,
                           "min_cluster_notional": cfg.min_cluster_notional, "min_accounts": cfg.min_accounts,
                           "max_band_bps": cfg.max_band_bps, "z_threshold": cfg.z_threshold,
                           "critical_distance_bps": cfg.critical_distance_bps},
            "crossed": "forced notional in the band exceeds factor x the depth absorbing it there, "
                       "without its largest account",
            "top_accounts": accounts,
            "liq_price_check": {"computed_with_venue_price": s.computed, "divergent": s.divergent,
                                "divergence_bps": cfg.divergence_bps, "cross_as_isolated": s.approx_cross,
                                "venue_fallback": s.venue_fallback},
            "observed_forced_notional_60s": round(forced, 2),
            "note": "liquidation prices computed from positions; observed liquidation prints are a lower bound "
                    "on public feeds",
        }
        out.append(Anomaly.make("thin_book_cluster", now, score, severity, symbol=symbol, detail=detail))
        return b

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
