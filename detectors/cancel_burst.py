"""cancel_burst: cancels out of proportion to trading, to their own normal, or to the book.

Features, summed per symbol over a sliding ``window_ms`` of event time (kept as one bucket
per tick, so a tick costs one bucket in and the expired ones out): cancel count, cancelled
notional, new orders, trades and traded notional, the cancelled notional within
``near_bps`` of the touch, and the largest *lump* pulled near the touch on each side. With
L3 ``order`` events they are exact and attributed to accounts, and a lump is one cancelled
order. On L2-only feeds (public venues) cancels are inferred: at each price, the size a
book delta took off the level minus the size traded at that price (trades not yet matched
by a delta are carried one tick, then dropped); a lump is what was pulled at one price in
the window (the grain at which a large resting order shows on L2: the churn of many small
orders spreads over many prices and updates, one large order does not).

Per symbol, two conditions; either fires, and one anomaly tells which (``trigger``):

- *surprise*: ``z_cancel`` (cancelled notional) >= ``z_threshold`` AND ``z_ratio``
  (cancelled / traded notional) >= ``ratio_z_threshold``, plus ``min_notional`` and (L3)
  ``min_cancels``. A benign surge where trades, orders and cancels rise together (~3x)
  moves the first z but not the second, so it stays silent.
- *level* (risk is a level as well as a surprise): a lump pulled near the touch of at
  least ``pull_min_notional`` and at least ``pull_depth_x`` x the depth still resting
  within ``near_bps`` of the touch on its side. A large resting size pulled fires even
  when the cancel-to-trade ratio barely moves (on a real venue its spread is ~1.1 in log
  space, so one large pull hardly shows in it); the z-scores then set its severity.

Each feature's baseline is ``detectors.baseline.EventBaseline`` (log space): a time
constant of ``baseline_tau_ms`` of event time whatever the tick rate, an explicit
``warmup_ms`` of event time before any anomaly, a ``std_floor`` (log space: at 0.7 a z of
4 takes ~16x the normal, past what calm re-quoting does), anomalous values not learned,
and no learning at all on a symbol while an episode is open there (it must not learn the
burst it is reporting); a level refused for ``readmit_ms`` in a row becomes the new normal.
Count and near-touch z are reported. The second opinion is one shallow river
``HalfSpaceTrees`` shared by all symbols, on the four per-symbol z-scores squashed into
[0, 1] (so one model serves symbols of any size, built once: building trees costs
milliseconds). It learns one non-overlapping window per symbol per ``window_ms`` and scores
only candidate ticks: it is reported in ``detail`` and never decides.

Per account (L3 only) -- the account's cancelled notional in the window against its own
normal: an exponentially decayed sum with time constant ``account_memory_ms`` in a compact
LRU table (three doubles per account, at most ``max_accounts``), folded in every
``FOLD_MS`` of event time (what is not folded yet is added at scoring). An account fires
when it cancels >= ``account_min_cancels`` orders and >= ``account_min_notional`` in the
window, >= ``account_x`` times its normal (an account with no history has none), and
cancels >= ``account_fill_ratio`` x what it filled. Only accounts with enough cancels in
the window are looked at.

One story, one signal (``detectors.latch``): one anomaly per episode per symbol, fired
again inside the episode only when its severity rises (with ``escalation`` > 0 also when
its z reaches that many times the z last fired; off by default: a z can double while a
burst builds). The accounts go into the symbol's anomaly: ``top_accounts`` by cancelled
notional with their cancel counts, fills and ratio to their own normal, and how many
accounts cancelled in the window; the top one is named on it when it holds
``account_share`` of the cancels. An account acting alone -- its symbol quiet, or in an
episode whose anomaly did not list it -- keeps its own anomaly, once per episode (nothing
re-fires it: its ratio to its own normal is unbounded and doubles tick by tick while a
burst builds). A new episode starts after the condition has been clear for ``rearm_ms``.

Severity. Level: warning; critical when the surprise holds too. Surprise alone: L3
warning, critical when both z reach ``z_critical``; L2-inferred cancels are estimates:
info, warning at ``z_critical``. Account: warning; critical when its near-touch cancels
exceed the depth resting near the touch. ``score`` is a z either way: the smaller of the
two surprise z, or the near-touch z when that is larger.

A symbol whose book is unreliable (sequence gap) is not scored at all: its deltas say
nothing about cancels (``feed_gap`` speaks for it).

>>> from monitor.events import Book, Trade
>>> from monitor.pipeline import Pipeline
>>> from monitor.state import MarketState
>>> cfg = CancelBurstConfig(warmup_ms=5_000, pull_min_notional=100_000)
>>> p, t0 = Pipeline(MarketState(), [CancelBurst(cfg)], tick_ms=250), 1_732_400_000_000
>>> bids = [(round(100.0 - k / 100, 2), 100.0) for k in range(1, 30)]
>>> out = p.process([Book(symbol="X", ts=t0, seq=1, snapshot=True, bids=bids,
...                       asks=[(round(200.0 - b, 2), s) for b, s in bids])])
>>> for i in range(1, 42):  # ten quiet seconds (a trade each), then 2,000 rest 0.1% under the touch...
...     out += p.process([Trade(symbol="X", ts=t0 + 250 * i, price=100.01, size=1.0, side="buy"),
...                       Book(symbol="X", ts=t0 + 250 * i, seq=i + 1, bids=[(99.9, 2_100.0)] if i == 38 else [])])
>>> out += p.process([Book(symbol="X", ts=t0 + 10_550, seq=43, bids=[(99.9, 100.0)])])  # ...pulled
>>> out += p.process([Trade(symbol="X", ts=t0 + 10_800, price=100.01, size=1.0, side="buy")])
>>> a = out[0]  # nothing was cancelled before, so the surprise holds too: critical
>>> len(out), a.severity, a.detail["trigger"], a.detail["pulled_near_touch"]
(1, 'critical', 'surprise+level', {'side': 'bid', 'lump': 199800.0, 'price': 99.9, 'depth_near_touch': 99945.0, 'ratio_to_depth': 1.999})
"""

from __future__ import annotations

import math
from collections import deque

from river import anomaly

from detectors.base import Detector, DetectorConfig
from detectors.baseline import EventBaseline
from detectors.latch import Latch
from detectors.rows import AccountRows
from monitor.events import Anomaly, Order, Trade
from monitor.state import MarketState

# indices into a tick bucket: the first NSUM are summed over the window, the lumps are maxima
CANCELS, CANCEL_N, NEWS, NEW_N, TRADES, TRADE_N, NEAR_N, LUMP_BID, LUMP_ASK = range(9)
NSUM, NFEAT = 7, 9
# indices into an account's per-bucket list (the first three) and its window sums (all four)
A_CANCEL_N, A_CANCELS, A_NEAR_N, A_FILL_N = range(4)
MAX_ACCOUNTS_PER_BUCKET = 10_000
MAX_PRICES_PER_TICK = 10_000  # L2: traded (and pulled) prices held per symbol per tick; more are not matched
HST_WINDOW = 64  # HalfSpaceTrees reference window, in learned windows (all symbols together)
FOLD_MS = 5_000  # account normals take in what accounts cancelled this often (event time)


class CancelBurstConfig(DetectorConfig, kw_only=True):
    window_ms: int = 2_000  # features are sums over this much event time
    near_bps: float = 10.0  # "near the touch": within this of the best price on its side
    z_threshold: float = 4.0  # cancelled notional vs the symbol's baseline (log space)
    ratio_z_threshold: float = 3.0  # cancel-to-trade ratio vs its baseline (log space)
    z_critical: float = 8.0  # both z at least this => critical
    min_cancels: int = 20  # L3: at least this many cancels in the window
    min_notional: float = 50_000.0  # at least this much cancelled notional in the window
    pull_depth_x: float = 1.5  # level: a lump pulled near the touch >= this x the depth resting there...
    pull_min_notional: float = 1_000_000.0  # ...and at least this much
    std_floor: float = 0.7  # log space: the least std a baseline has (z >= 4 then takes >= e^2.8 ~ 16x its normal)
    warmup_ms: int = 60_000  # event time of baseline before any anomaly
    baseline_tau_ms: int = 600_000  # time constant of the baselines (event time)
    readmit_ms: int = 600_000  # a level refused (or held) this long in a row becomes the new normal
    rearm_ms: int = 30_000  # an episode ends after the condition is clear this long
    escalation: float = 0.0  # inside an episode, also re-fire at this x the z last fired (0: severity only)
    top_accounts: int = 5  # accounts listed in detail (L3 only)
    account_share: float = 0.5  # an account with this share of the cancels is named on the anomaly
    account_min_cancels: int = 20  # per account: cancels in the window...
    account_min_notional: float = 50_000.0  # ...cancelled notional in the window...
    account_x: float = 8.0  # ...this many times its own normal...
    account_fill_ratio: float = 5.0  # ...and this many times what it filled
    account_memory_ms: int = 600_000  # time constant of an account's normal (decayed sum)
    max_accounts: int = 2_000_000  # accounts with a normal kept (LRU)
    hst: bool = True  # river HalfSpaceTrees second opinion in detail
    l2_infer: bool = True  # infer cancels from book deltas when a symbol has no L3 orders

    def __post_init__(self) -> None:
        for key in ("window_ms", "baseline_tau_ms", "rearm_ms", "account_memory_ms"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0")
        for key in ("warmup_ms", "readmit_ms", "escalation", "pull_depth_x", "pull_min_notional", "std_floor"):
            if getattr(self, key) < 0:
                raise ValueError(f"{key} must be >= 0")


class _Sym:
    __slots__ = ("cur", "accts", "fills", "pulls", "traded_cur", "traded_prev", "buckets", "w", "acct_n", "pull_w",
                 "l3", "first", "base_c", "base_r", "base_n", "base_near", "model_ts", "unreliable_ticks", "listed")

    def __init__(self, cfg: CancelBurstConfig) -> None:
        self.cur = [0.0] * NFEAT
        self.accts: dict[str, list[float]] = {}  # this tick: account -> [cancelled, cancels, near touch]
        self.fills: dict[str, float] = {}  # this tick: account -> filled notional
        self.pulls: dict[float, float] = {}  # L2, this tick: price (bids +, asks -) -> notional pulled near the touch
        self.traded_cur: dict[float, float] = {}  # L2: size traded per price this tick
        self.traded_prev: dict[float, float] = {}  # ... and not yet matched from the last tick
        self.buckets: deque[tuple[int, list[float], dict[str, list[float]], dict[str, float], dict[float, float]]] \
            = deque()
        self.w = [0.0] * NSUM  # running window sums
        self.acct_n: dict[str, int] = {}  # running per-account cancel counts in the window
        self.pull_w: dict[float, float] = {}  # L2: running notional pulled per (signed) price in the window
        self.l3 = False
        self.first = 0  # first tick seen
        mk = lambda: EventBaseline(cfg.baseline_tau_ms, cfg.warmup_ms, cfg.std_floor, cfg.readmit_ms)  # noqa: E731
        self.base_c, self.base_r, self.base_n, self.base_near = mk(), mk(), mk(), mk()
        self.model_ts = 0
        self.unreliable_ticks = 0
        self.listed: set[str] = set()  # accounts the open episode's anomalies listed


class CancelBurst(Detector):
    name = "cancel_burst"
    Config = CancelBurstConfig
    consumes = (Order, Trade)
    check_params = [{}, {"warmup_ms": 2_000, "window_ms": 1_000, "min_notional": 100.0, "min_cancels": 2,
                         "account_min_cancels": 2, "account_min_notional": 100.0, "max_accounts": 16,
                         "rearm_ms": 1_000, "hst": True, "pull_min_notional": 1_000.0, "escalation": 2.0},
                    {"warmup_ms": 1_000, "hst": False, "l2_infer": False, "max_accounts": 4, "z_threshold": 1.0,
                     "ratio_z_threshold": 0.5, "min_notional": 1.0, "min_cancels": 1, "pull_depth_x": 0.1,
                     "pull_min_notional": 1.0, "baseline_tau_ms": 5_000}]

    def __init__(self, config: CancelBurstConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        self._syms: dict[str, _Sym] = {}
        self._latch = Latch(cfg.rearm_ms, cfg.escalation)
        self._account_latch = Latch(cfg.rearm_ms, 0.0)  # an account fires once per episode
        self.accounts = AccountRows(("first", "last", "sum"), cfg.max_accounts)
        self._unfolded: dict[str, float] = {}  # cancelled notional per account since the last fold
        self._folded_at = 0
        self._near = cfg.near_bps / 1e4
        self.model = anomaly.HalfSpaceTrees(n_trees=10, height=6, window_size=HST_WINDOW, seed=7) if cfg.hst else None
        self.model_n = 0  # windows learned

    def bounds(self) -> dict[str, tuple[int, int]]:
        """Per-key maps and their caps (the check suite verifies them)."""
        return {"accounts": (len(self.accounts), self.accounts.cap),
                "latch": (len(self._latch), self._latch.max_keys),
                "account_latch": (len(self._account_latch), self._account_latch.max_keys),
                "unfolded": (len(self._unfolded), self.accounts.cap)}

    def symbol_maps(self) -> dict[str, int]:
        return {"symbols": len(self._syms)}

    # -- events: O(1), counters only ---------------------------------------------------
    def on_event(self, ev, state: MarketState) -> None:
        s = self._syms.get(ev.symbol)
        if s is None:
            s = self._syms[ev.symbol] = _Sym(self.config)
        cur = s.cur
        if type(ev) is Trade:
            cur[TRADES] += 1
            cur[TRADE_N] += ev.price * ev.size
            if not s.l3:
                tc = s.traded_cur
                if len(tc) < MAX_PRICES_PER_TICK or ev.price in tc:
                    tc[ev.price] = tc.get(ev.price, 0.0) + ev.size
            return
        s.l3 = True
        action = ev.action
        if action == "cancel":
            n = ev.price * ev.size
            cur[CANCELS] += 1
            cur[CANCEL_N] += n
            near = 0.0
            book = state.books.get(ev.symbol)
            if book is not None:
                if ev.side == "buy":
                    bb = book._best_bid
                    if bb is not None and ev.price >= bb * (1 - self._near):
                        near = n
                        cur[LUMP_BID] = max(cur[LUMP_BID], n)
                else:
                    ba = book._best_ask
                    if ba is not None and ev.price <= ba * (1 + self._near):
                        near = n
                        cur[LUMP_ASK] = max(cur[LUMP_ASK], n)
                cur[NEAR_N] += near
            a = s.accts.get(ev.account)
            if a is None:
                if len(s.accts) >= MAX_ACCOUNTS_PER_BUCKET:
                    return
                s.accts[ev.account] = [n, 1, near]
            else:
                a[A_CANCEL_N] += n
                a[A_CANCELS] += 1
                a[A_NEAR_N] += near
        elif action == "new":
            cur[NEWS] += 1
            cur[NEW_N] += ev.price * ev.size
        elif action == "fill":
            fills = s.fills
            if len(fills) < MAX_ACCOUNTS_PER_BUCKET or ev.account in fills:
                fills[ev.account] = fills.get(ev.account, 0.0) + ev.price * ev.size

    # -- ticks -------------------------------------------------------------------------
    def on_tick(self, now: int, state: MarketState) -> list[Anomaly]:
        out: list[Anomaly] = []
        for symbol, s in self._syms.items():
            self._tick_symbol(symbol, s, now, state, out)
        if now - self._folded_at >= FOLD_MS:
            self._fold(now)
        return out

    def _tick_symbol(self, symbol: str, s: _Sym, now: int, state: MarketState, out: list[Anomaly]) -> None:
        cfg = self.config
        book = state.books.get(symbol)
        cur = s.cur
        if book is not None:
            if s.l3 or not cfg.l2_infer:
                book.pulled_at = None
            else:
                self._infer_l2(s, book, cur)
        # slide the window: this tick's bucket in, expired ones out
        bucket_accts, pulls = s.accts, s.pulls
        s.buckets.append((now, cur, bucket_accts, s.fills, pulls))
        w, acct_n, pull_w = s.w, s.acct_n, s.pull_w
        for i in range(NSUM):
            w[i] += cur[i]
        for p, n in pulls.items():
            pull_w[p] = pull_w.get(p, 0.0) + n
        if bucket_accts:
            unfolded = self._unfolded
            for acct, a in bucket_accts.items():
                acct_n[acct] = acct_n.get(acct, 0) + a[A_CANCELS]
                unfolded[acct] = unfolded.get(acct, 0.0) + a[A_CANCEL_N]
            if len(unfolded) > self.accounts.cap:
                self._fold(now)  # early: the unfolded map obeys the cap too
        horizon = now - cfg.window_ms
        buckets = s.buckets
        while buckets[0][0] <= horizon:
            _, old, old_accts, _, old_pulls = buckets.popleft()
            for i in range(NSUM):
                w[i] -= old[i]
            for acct, a in old_accts.items():
                left = acct_n[acct] - a[A_CANCELS]
                if left:
                    acct_n[acct] = left
                else:
                    del acct_n[acct]
            for p, n in old_pulls.items():
                left = pull_w.get(p, 0.0) - n  # a residue under 1e-6 was dropped already
                if left > 1e-6:
                    pull_w[p] = left
                else:
                    pull_w.pop(p, None)
        s.cur = [0.0] * NFEAT
        s.accts = {}
        s.fills = {}
        s.pulls = {}
        if not s.first:
            s.first = now
        if now - s.first < cfg.window_ms:
            return  # the window is not full yet
        if book is not None and not book.reliable:
            s.unreliable_ticks += 1
            return  # a resyncing book's deltas say nothing about cancels
        for i in range(NSUM):  # float residue of the running sums
            if w[i] < 1e-9:
                w[i] = 0.0
        xs = (math.log1p(w[CANCEL_N]), math.log1p(w[CANCEL_N]) - math.log1p(w[TRADE_N]), math.log1p(w[CANCELS]),
              math.log1p(w[NEAR_N]))
        bases = (s.base_c, s.base_r, s.base_n, s.base_near)
        zs = tuple(b.z(x) for b, x in zip(bases, xs))
        z_c, z_r = zs[0], zs[1]
        warm = s.base_c.ready and s.base_r.ready
        surprise = (warm and z_c >= cfg.z_threshold and z_r >= cfg.ratio_z_threshold
                    and w[CANCEL_N] >= cfg.min_notional and (not s.l3 or w[CANCELS] >= cfg.min_cancels))
        level = self._level(s, book) if warm and w[NEAR_N] >= cfg.pull_min_notional else None
        candidate = surprise or level is not None
        # score before learn; nothing is learned on a symbol while an episode is open there
        hold = candidate or self._latch.active(symbol, now)
        for b, x, protect in zip(bases, xs, (cfg.z_threshold, cfg.ratio_z_threshold, cfg.z_threshold,
                                             cfg.z_threshold)):
            b.observe(x, now, protect_above=protect, one_sided=True, hold=hold)
        hst = self._second_opinion(s, zs, now, candidate)
        if candidate:
            self._symbol_anomaly(symbol, s, now, w, zs, surprise, level, hst, out)
        if s.l3 and warm and bucket_accts:
            self._accounts(symbol, s, now, book, bucket_accts, out)

    def _infer_l2(self, s: _Sym, book, cur: list[float]) -> None:
        at = book.pulled_at
        prev, tc = s.traded_prev, s.traded_cur
        if at is None:
            book.pulled_at = {}
        elif at:
            bb, ba = book._best_bid, book._best_ask
            lo = bb * (1 - self._near) if bb is not None else math.inf
            hi = ba * (1 + self._near) if ba is not None else -math.inf
            mid = (bb + ba) / 2 if bb is not None and ba is not None else None
            pulls = s.pulls
            cancelled = near = 0.0
            for p, dec in at.items():
                t = prev.pop(p, 0.0)
                if t < dec:
                    t += tc.pop(p, 0.0)
                c = dec - t
                if c > 0:
                    n = c * p
                    cancelled += n
                    # a level pulled on the bid side (below mid, or no asks) near the best bid, or the ask side
                    if (p < mid if mid is not None else ba is None) and p >= lo:
                        near += n
                        if len(pulls) < MAX_PRICES_PER_TICK or p in pulls:
                            pulls[p] = pulls.get(p, 0.0) + n
                    elif (p >= mid if mid is not None else bb is None) and p <= hi:
                        near += n
                        if len(pulls) < MAX_PRICES_PER_TICK or -p in pulls:
                            pulls[-p] = pulls.get(-p, 0.0) + n
                elif c < 0:
                    tc[p] = tc.get(p, 0.0) - c
            at.clear()
            cur[CANCEL_N] += cancelled
            cur[NEAR_N] += near
        s.traded_prev = tc  # unmatched trades get one more tick, then are dropped
        s.traded_cur = {}

    def _level(self, s: _Sym, book) -> dict | None:
        """The level condition: the largest lump pulled near the touch in the window against
        the depth resting near the touch on its side now; None when it does not hold."""
        if book is None:
            return None
        cfg = self.config
        if s.l3:  # one cancelled order
            lumps = {"bid": max(b[1][LUMP_BID] for b in s.buckets), "ask": max(b[1][LUMP_ASK] for b in s.buckets)}
            prices = {"bid": None, "ask": None}
        else:  # what was pulled at one price in the window
            best = {"bid": (0.0, None), "ask": (0.0, None)}
            for p, n in s.pull_w.items():
                side = "bid" if p > 0 else "ask"
                if n > best[side][0]:
                    best[side] = (n, abs(p))
            lumps = {k: v[0] for k, v in best.items()}
            prices = {k: v[1] for k, v in best.items()}
        found = None
        for side, lump in lumps.items():
            if lump < cfg.pull_min_notional:
                continue
            if side == "bid":
                bb = book._best_bid
                depth = book.depth_notional("bid", bb * (1 - self._near), bb) if bb is not None else 0.0
            else:
                ba = book._best_ask
                depth = book.depth_notional("ask", ba, ba * (1 + self._near)) if ba is not None else 0.0
            ratio = lump / depth if depth > 0 else math.inf
            if ratio >= cfg.pull_depth_x and (found is None or ratio > found["ratio_to_depth"]):
                found = {"side": side, "lump": round(lump, 2), "price": prices[side],
                         "depth_near_touch": round(depth, 2), "ratio_to_depth": round(ratio, 3)}
        return found

    def _second_opinion(self, s: _Sym, zs: tuple[float, ...], now: int, candidate: bool) -> float | None:
        model = self.model
        if model is None:
            return None
        learn = now - s.model_ts >= self.config.window_ms
        if not (candidate or learn):
            return None
        # the per-symbol z-scores squashed into [0, 1]: one model for symbols of any size
        x = {k: 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z)) / 2.0))
             for k, z in zip(("cancel", "ratio", "count", "near"), zs)}
        # score before learn; None until the trees hold a full reference window
        score = round(model.score_one(x), 4) if candidate and self.model_n >= HST_WINDOW else None
        if learn and not candidate:
            model.learn_one(x)
            s.model_ts = now
            self.model_n += 1
        return score

    def _symbol_anomaly(self, symbol, s, now, w, zs, surprise, level, hst, out) -> None:
        cfg = self.config
        z_c, z_r, z_n, z_near = zs
        z_s = min(z_c, z_r)
        score = max(z_s, z_near)
        if level is not None:
            severity = "critical" if surprise else "warning"
        elif s.l3:
            severity = "critical" if z_s >= cfg.z_critical else "warning"
        else:
            severity = "warning" if z_s >= cfg.z_critical else "info"
        new_episode = not self._latch.active(symbol, now)
        if not self._latch.fire(symbol, now, score, severity):
            return
        if new_episode:
            s.listed = set()
        sums = self._window_sums(s, s.acct_n)
        top = sorted(sums.items(), key=lambda kv: (-kv[1][A_CANCEL_N], str(kv[0])))[: cfg.top_accounts]
        cancel_n = w[CANCEL_N] or 1.0
        top_accounts = []
        for a, v in top:
            if v[A_CANCEL_N] <= 0:
                continue
            normal = self._normal(a, v[A_CANCEL_N], now)
            top_accounts.append({"account": str(a), "cancels": int(v[A_CANCELS]),
                                 "cancelled_notional": round(v[A_CANCEL_N], 2),
                                 "share": round(v[A_CANCEL_N] / cancel_n, 4),
                                 "filled_notional": round(v[A_FILL_N], 2),
                                 "ratio_to_normal": round(v[A_CANCEL_N] / normal, 3) if normal else None})
            s.listed.add(a)
        named = top_accounts[0]["account"] if top_accounts and top_accounts[0]["share"] >= cfg.account_share else None
        trigger = "surprise+level" if surprise and level is not None else "surprise" if surprise else "level"
        out.append(Anomaly.make("cancel_burst", now, score, severity, symbol=symbol, account=named, detail={
            "scope": "symbol",
            "trigger": trigger,
            "mode": "L3" if s.l3 else "L2-inferred",
            "window_ms": cfg.window_ms,
            "features": {
                "cancels": int(round(w[CANCELS])) if s.l3 else None,
                "cancelled_notional": round(w[CANCEL_N], 2),
                "new_orders": int(round(w[NEWS])),
                "trades": int(round(w[TRADES])),
                "traded_notional": round(w[TRADE_N], 2),
                "cancel_to_trade": round(w[CANCEL_N] / w[TRADE_N], 3) if w[TRADE_N] else None,
                "pulled_near_touch": round(w[NEAR_N], 2),
            },
            "pulled_near_touch": level,
            "near_bps": cfg.near_bps,
            "z": {"cancelled_notional": round(z_c, 3), "cancel_to_trade": round(z_r, 3),
                  "cancels": round(z_n, 3), "pulled_near_touch": round(z_near, 3)},
            "baseline_log": {"cancelled_notional": s.base_c.snapshot(), "cancel_to_trade": s.base_r.snapshot(),
                             "cancels": s.base_n.snapshot(), "pulled_near_touch": s.base_near.snapshot()},
            "thresholds": {"z_cancel": cfg.z_threshold, "z_ratio": cfg.ratio_z_threshold,
                           "z_critical": cfg.z_critical, "min_notional": cfg.min_notional,
                           "min_cancels": cfg.min_cancels, "pull_depth_x": cfg.pull_depth_x,
                           "pull_min_notional": cfg.pull_min_notional},
            "crossed": "; ".join(filter(None, (
                "cancelled notional and cancel-to-trade ratio both above their baselines" if surprise else None,
                (f"{'an order' if s.l3 else 'a level'} pulled near the touch on the {level['side']} side, "
                 f"{level['ratio_to_depth']}x the depth resting there") if level is not None else None))),
            "hst_score": hst,
            "accounts_cancelling": len(s.acct_n) if s.l3 else None,
            "top_accounts": top_accounts,
            "note": None if s.l3 else "L2-inferred: level decreases not explained by trades at that price",
        }))

    @staticmethod
    def _window_sums(s: _Sym, accounts) -> dict[str, list[float]]:
        """[cancelled, cancels, near touch, filled] over the window, for these accounts."""
        out = {a: [0.0, 0, 0.0, 0.0] for a in accounts}
        for _, _, accts, fills, _ in s.buckets:
            for a, v in accts.items():
                t = out.get(a)
                if t is not None:
                    t[A_CANCEL_N] += v[A_CANCEL_N]
                    t[A_CANCELS] += v[A_CANCELS]
                    t[A_NEAR_N] += v[A_NEAR_N]
            for a, f in fills.items():
                t = out.get(a)
                if t is not None:
                    t[A_FILL_N] += f
        return out

    def _fold(self, now: int) -> None:
        """Take what accounts cancelled since the last fold into their normals."""
        self._folded_at = now
        if not self._unfolded:
            return
        unfolded, self._unfolded = self._unfolded, {}
        rows, tau = self.accounts, self.config.account_memory_ms
        first, last, total = rows.cols
        for acct, n in unfolded.items():
            i = rows.touch(acct)
            if not first[i]:
                first[i] = now
            else:
                total[i] *= math.exp(-(now - last[i]) / tau)
            total[i] += n
            last[i] = now

    def _normal(self, acct: str, cn: float, now: int) -> float | None:
        """The account's normal cancelled notional per window: folded history decayed to now,
        plus what is not folded yet, minus this window's ``cn`` (score before learn). None
        while its history is shorter than a window."""
        rows, tau, window = self.accounts, self.config.account_memory_ms, self.config.window_ms
        i = rows.get(acct)
        if i is None:
            return None
        first, last, total = rows.cols
        span = tau * (1 - math.exp(-(now - first[i]) / tau))
        if span <= window:
            return None
        seen = total[i] * math.exp(-(now - last[i]) / tau) + self._unfolded.get(acct, 0.0)
        return max(0.0, seen - cn) / span * window

    def _accounts(self, symbol, s, now, book, bucket_accts, out) -> None:
        cfg = self.config
        acct_n = s.acct_n
        # the symbol's open episode already lists these accounts in its own anomaly
        listed = s.listed if self._latch.active(symbol, now) else ()
        candidates = [a for a in bucket_accts if acct_n.get(a, 0) >= cfg.account_min_cancels and a not in listed]
        if not candidates:
            return
        first = self.accounts.cols[0]
        sums = self._window_sums(s, candidates)
        depth_near = None
        for acct in candidates:
            wa = sums[acct]
            cn = wa[A_CANCEL_N]
            if cn < cfg.account_min_notional or cn < cfg.account_fill_ratio * wa[A_FILL_N]:
                continue
            normal = self._normal(acct, cn, now)
            if normal is not None and cn < cfg.account_x * normal:
                continue
            if depth_near is None:
                depth_near = sum(book.depth_within_bps(cfg.near_bps)) if book is not None else 0.0
            ratio = cn / normal if normal else None
            score = min(ratio, 1e6) if ratio is not None else cn / cfg.account_min_notional
            severity = "critical" if depth_near and wa[A_NEAR_N] > depth_near else "warning"
            if not self._account_latch.fire((symbol, acct), now, 0.0, "info"):
                continue  # once per episode: neither its unbounded ratio nor its severity re-fires it
            i = self.accounts.get(acct)
            out.append(Anomaly.make("cancel_burst", now, score, severity, symbol=symbol, account=acct, detail={
                "scope": "account",
                "mode": "L3",
                "window_ms": cfg.window_ms,
                "features": {"cancels": int(round(wa[A_CANCELS])), "cancelled_notional": round(cn, 2),
                             "filled_notional": round(wa[A_FILL_N], 2),
                             "cancel_to_fill": round(cn / wa[A_FILL_N], 3) if wa[A_FILL_N] > 0 else None,
                             "pulled_near_touch": round(wa[A_NEAR_N], 2),
                             "share_of_symbol_cancels": round(cn / s.w[CANCEL_N], 4) if s.w[CANCEL_N] else None},
                "baseline": {"normal_window_notional": round(normal, 2) if normal is not None else None,
                             "memory_ms": cfg.account_memory_ms,
                             "history": "none: first seen in this window" if normal is None
                             else f"known for {now - int(first[i])} ms"},
                "ratio_to_normal": round(ratio, 3) if ratio is not None else None,
                "depth_near_touch": round(depth_near, 2),
                "thresholds": {"account_min_cancels": cfg.account_min_cancels,
                               "account_min_notional": cfg.account_min_notional, "account_x": cfg.account_x,
                               "account_fill_ratio": cfg.account_fill_ratio},
                "crossed": "the account's cancels in the window far above its own normal and its fills",
            }))
