"""cancel_burst: cancels out of proportion to trading and to their own normal.

Features, summed per symbol over a sliding ``window_ms`` of event time (kept as one bucket
per tick, so a tick costs one bucket in and the expired ones out): cancel count, cancelled
notional, new orders, trades and traded notional, and the cancelled notional within
``near_bps`` of the touch. With L3 ``order`` events they are exact and attributed to
accounts. On L2-only feeds (public venues) cancels are inferred: at each price, the size a
book delta took off the level minus the size traded at that price (trades not yet matched
by a delta are carried one tick, then dropped).

Per symbol — each feature has a robust baseline (river EW mean/variance in log space,
``detectors.baseline.Baseline``: warm-up, std floor, anomalous values not learned). A
burst needs ``z_cancel`` (cancelled notional) >= ``z_threshold`` AND ``z_ratio``
(cancelled / traded notional) >= ``ratio_z_threshold``, plus ``min_notional`` and (L3)
``min_cancels``. A benign surge where trades, orders and cancels rise together (~3x)
moves the first z but not the second, so it stays silent. Count and near-touch z are
reported. The second opinion is one shallow river ``HalfSpaceTrees`` shared by all
symbols, on the four per-symbol z-scores squashed into [0, 1] (so one model serves
symbols of any size, built once: building trees costs milliseconds). It learns one
non-overlapping window per symbol per ``window_ms`` and scores only candidate ticks: it
is reported in ``detail`` and never decides.

Per account (L3 only) — the account's cancelled notional in the window against its own
normal: an exponentially decayed sum with time constant ``account_memory_ms`` in a compact
LRU table (three doubles per account, at most ``max_accounts``), folded in every
``FOLD_MS`` of event time (what is not folded yet is added at scoring). An account fires
when it cancels >= ``account_min_cancels`` orders and >= ``account_min_notional`` in the
window, >= ``account_x`` times its normal (an account with no history has none), and
cancels >= ``account_fill_ratio`` x what it filled. Only accounts with enough cancels in
the window are looked at. A symbol anomaly already naming the account at that tick takes
its place.

Severity: symbol (L3) warning; critical when both z reach ``z_critical`` or the notional
cancelled near the touch in the window exceeds what rests there now. L2-inferred cancels
are estimates: info, or warning under the critical rule. Account: warning; critical when
its near-touch cancels exceed the resting near-touch depth.

Re-arm (``detectors.latch``): one anomaly per episode per symbol (per account); it fires
again inside an episode only on escalation (higher severity, or ``escalation`` x the
score), and a new episode starts after the condition has been clear for ``rearm_ms``.
A symbol whose book is unreliable (sequence gap) is not scored at all: its deltas say
nothing about cancels (``feed_gap`` speaks for it).

>>> from monitor.events import Order
>>> from monitor.state import MarketState
>>> d, st = CancelBurst(CancelBurstConfig(warmup_ticks=4)), MarketState()
>>> d.on_event(Order(symbol="X", ts=1_732_400_000_000, order_id=1, account="a", action="cancel",
...                  side="buy", price=10.0, size=1.0), st)
>>> d.on_tick(1_732_400_000_250, st)
[]
"""

from __future__ import annotations

import math
from collections import deque

from river import anomaly

from detectors.base import Detector, DetectorConfig
from detectors.baseline import Baseline
from detectors.latch import Latch
from detectors.rows import AccountRows
from monitor.events import Anomaly, Order, Trade
from monitor.state import MarketState

# indices into a tick bucket
CANCELS, CANCEL_N, NEWS, NEW_N, TRADES, TRADE_N, NEAR_N = range(7)
NFEAT = 7
# indices into an account's per-bucket list (the first three) and its window sums (all four)
A_CANCEL_N, A_CANCELS, A_NEAR_N, A_FILL_N = range(4)
MAX_ACCOUNTS_PER_BUCKET = 10_000
MAX_PRICES_PER_TICK = 10_000  # L2: traded prices held per symbol per tick; trades at more are not matched
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
    warmup_ticks: int = 240  # ticks of baseline before any anomaly (60 s at 250 ms)
    fading: float = 0.02  # EW weight of the newest tick in the baselines
    readmit_ticks: int = 2_400  # an anomalous level lasting this many ticks becomes the new normal
    rearm_ms: int = 30_000  # an episode ends after the condition is clear this long
    escalation: float = 2.0  # inside an episode, re-fire only at this x the last score (or higher severity)
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


class _Sym:
    __slots__ = ("cur", "accts", "fills", "traded_cur", "traded_prev", "buckets", "w", "acct_n", "l3", "first",
                 "base_c", "base_r", "base_n", "base_near", "model_ts", "unreliable_ticks")

    def __init__(self, cfg: CancelBurstConfig) -> None:
        self.cur = [0.0] * NFEAT
        self.accts: dict[str, list[float]] = {}  # this tick: account -> [cancelled, cancels, near touch]
        self.fills: dict[str, float] = {}  # this tick: account -> filled notional
        self.traded_cur: dict[float, float] = {}  # L2: size traded per price this tick
        self.traded_prev: dict[float, float] = {}  # ... and not yet matched from the last tick
        self.buckets: deque[tuple[int, list[float], dict[str, list[float]], dict[str, float]]] = deque()
        self.w = [0.0] * NFEAT  # running window sums
        self.acct_n: dict[str, int] = {}  # running per-account cancel counts in the window
        self.l3 = False
        self.first = 0  # first tick seen
        mk = lambda: Baseline(cfg.fading, cfg.warmup_ticks, 0.25, cfg.readmit_ticks)  # noqa: E731
        self.base_c, self.base_r, self.base_n, self.base_near = mk(), mk(), mk(), mk()
        self.model_ts = 0
        self.unreliable_ticks = 0


class CancelBurst(Detector):
    name = "cancel_burst"
    Config = CancelBurstConfig
    consumes = (Order, Trade)
    check_params = [{}, {"warmup_ticks": 8, "window_ms": 1_000, "min_notional": 100.0, "min_cancels": 2,
                         "account_min_cancels": 2, "account_min_notional": 100.0, "max_accounts": 16,
                         "rearm_ms": 1_000, "hst": True},
                    {"warmup_ticks": 4, "hst": False, "l2_infer": False, "max_accounts": 4, "z_threshold": 1.0,
                     "ratio_z_threshold": 0.5, "min_notional": 1.0, "min_cancels": 1}]

    def __init__(self, config: CancelBurstConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        self._syms: dict[str, _Sym] = {}
        self._latch = Latch(cfg.rearm_ms, cfg.escalation)
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
                else:
                    ba = book._best_ask
                    if ba is not None and ev.price <= ba * (1 + self._near):
                        near = n
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
        bucket_accts = s.accts
        s.buckets.append((now, cur, bucket_accts, s.fills))
        w, acct_n = s.w, s.acct_n
        for i in range(NFEAT):
            w[i] += cur[i]
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
            _, old, old_accts, _ = buckets.popleft()
            for i in range(NFEAT):
                w[i] -= old[i]
            for acct, a in old_accts.items():
                left = acct_n[acct] - a[A_CANCELS]
                if left:
                    acct_n[acct] = left
                else:
                    del acct_n[acct]
        s.cur = [0.0] * NFEAT
        s.accts = {}
        s.fills = {}
        if not s.first:
            s.first = now
        if now - s.first < cfg.window_ms:
            return  # the window is not full yet
        if book is not None and not book.reliable:
            s.unreliable_ticks += 1
            return  # a resyncing book's deltas say nothing about cancels
        for i in range(NFEAT):  # float residue of the running sums
            if w[i] < 1e-9:
                w[i] = 0.0
        x_c = math.log1p(w[CANCEL_N])
        x_r = x_c - math.log1p(w[TRADE_N])
        x_n = math.log1p(w[CANCELS])
        x_near = math.log1p(w[NEAR_N])
        z_c = s.base_c.observe(x_c, protect_above=cfg.z_threshold, one_sided=True)
        z_r = s.base_r.observe(x_r, protect_above=cfg.ratio_z_threshold, one_sided=True)
        z_n = s.base_n.observe(x_n, protect_above=cfg.z_threshold, one_sided=True)
        z_near = s.base_near.observe(x_near, protect_above=cfg.z_threshold, one_sided=True)
        warm = s.base_c.ready and s.base_r.ready
        candidate = (warm and z_c >= cfg.z_threshold and z_r >= cfg.ratio_z_threshold
                     and w[CANCEL_N] >= cfg.min_notional and (not s.l3 or w[CANCELS] >= cfg.min_cancels))
        hst = self._second_opinion(s, (z_c, z_r, z_n, z_near), now, candidate)
        named: str | None = None
        if candidate:
            named = self._symbol_anomaly(symbol, s, now, book, w, (z_c, z_r, z_n, z_near), hst, out)
        if s.l3 and warm and bucket_accts:
            self._accounts(symbol, s, now, book, bucket_accts, named, out)

    def _infer_l2(self, s: _Sym, book, cur: list[float]) -> None:
        at = book.pulled_at
        prev, tc = s.traded_prev, s.traded_cur
        if at is None:
            book.pulled_at = {}
        elif at:
            bb, ba = book._best_bid, book._best_ask
            lo = bb * (1 - self._near) if bb is not None else math.inf
            hi = ba * (1 + self._near) if ba is not None else -math.inf
            cancelled = near = 0.0
            for p, dec in at.items():
                t = prev.pop(p, 0.0)
                if t < dec:
                    t += tc.pop(p, 0.0)
                c = dec - t
                if c > 0:
                    cancelled += c * p
                    if lo <= p <= hi:
                        near += c * p
                elif c < 0:
                    tc[p] = tc.get(p, 0.0) - c
            at.clear()
            cur[CANCEL_N] += cancelled
            cur[NEAR_N] += near
        s.traded_prev = tc  # unmatched trades get one more tick, then are dropped
        s.traded_cur = {}

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

    def _symbol_anomaly(self, symbol, s, now, book, w, zs, hst, out) -> str | None:
        cfg = self.config
        z_c, z_r, z_n, z_near = zs
        depth_near = sum(book.depth_within_bps(cfg.near_bps)) if book is not None else None
        score = min(z_c, z_r)
        pulled_past_depth = depth_near is not None and w[NEAR_N] > depth_near > 0
        critical = score >= cfg.z_critical or pulled_past_depth
        if s.l3:
            severity = "critical" if critical else "warning"
        else:
            severity = "warning" if critical else "info"
        sums = self._window_sums(s, s.acct_n)
        top = sorted(sums.items(), key=lambda kv: (-kv[1][A_CANCEL_N], str(kv[0])))[: cfg.top_accounts]
        cancel_n = w[CANCEL_N] or 1.0
        top_accounts = [{"account": str(a), "cancels": int(v[A_CANCELS]),
                         "cancelled_notional": round(v[A_CANCEL_N], 2), "share": round(v[A_CANCEL_N] / cancel_n, 4),
                         "filled_notional": round(v[A_FILL_N], 2)} for a, v in top if v[A_CANCEL_N] > 0]
        named = top_accounts[0]["account"] if top_accounts and top_accounts[0]["share"] >= cfg.account_share else None
        if not self._latch.fire(symbol, now, score, severity):
            return named
        out.append(Anomaly.make("cancel_burst", now, score, severity, symbol=symbol, account=named, detail={
            "scope": "symbol",
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
            "depth_near_touch": round(depth_near, 2) if depth_near is not None else None,
            "near_bps": cfg.near_bps,
            "z": {"cancelled_notional": round(z_c, 3), "cancel_to_trade": round(z_r, 3),
                  "cancels": round(z_n, 3), "pulled_near_touch": round(z_near, 3)},
            "baseline_log": {"cancelled_notional": s.base_c.snapshot(), "cancel_to_trade": s.base_r.snapshot(),
                             "cancels": s.base_n.snapshot(), "pulled_near_touch": s.base_near.snapshot()},
            "thresholds": {"z_cancel": cfg.z_threshold, "z_ratio": cfg.ratio_z_threshold,
                           "z_critical": cfg.z_critical, "min_notional": cfg.min_notional,
                           "min_cancels": cfg.min_cancels},
            "crossed": "cancelled notional and cancel-to-trade ratio both above their baselines"
                       + ("; pulled near the touch exceeds the depth resting there" if pulled_past_depth else ""),
            "hst_score": hst,
            "top_accounts": top_accounts,
            "note": None if s.l3 else "L2-inferred: level decreases not explained by trades at that price",
        }))
        return named

    @staticmethod
    def _window_sums(s: _Sym, accounts) -> dict[str, list[float]]:
        """[cancelled, cancels, near touch, filled] over the window, for these accounts."""
        out = {a: [0.0, 0, 0.0, 0.0] for a in accounts}
        for _, _, accts, fills in s.buckets:
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

    def _accounts(self, symbol, s, now, book, bucket_accts, named, out) -> None:
        cfg = self.config
        acct_n = s.acct_n
        candidates = [a for a in bucket_accts if acct_n.get(a, 0) >= cfg.account_min_cancels and a != named]
        if not candidates:
            return
        rows, tau = self.accounts, cfg.account_memory_ms
        first, last, total = rows.cols
        sums = self._window_sums(s, candidates)
        depth_near = None
        for acct in candidates:
            wa = sums[acct]
            cn = wa[A_CANCEL_N]
            if cn < cfg.account_min_notional or cn < cfg.account_fill_ratio * wa[A_FILL_N]:
                continue
            # the account's normal: folded history decayed to now, plus what is not folded yet,
            # minus this window (score before learn)
            normal = None
            i = rows.get(acct)
            if i is not None:
                age = now - first[i]
                span = tau * (1 - math.exp(-age / tau))
                if span > cfg.window_ms:
                    seen = total[i] * math.exp(-(now - last[i]) / tau) + self._unfolded.get(acct, 0.0)
                    normal = max(0.0, seen - cn) / span * cfg.window_ms
            if normal is not None and cn < cfg.account_x * normal:
                continue
            if depth_near is None:
                depth_near = sum(book.depth_within_bps(cfg.near_bps)) if book is not None else 0.0
            ratio = cn / normal if normal else None
            score = min(ratio, 1e6) if ratio is not None else cn / cfg.account_min_notional
            severity = "critical" if depth_near and wa[A_NEAR_N] > depth_near else "warning"
            if not self._latch.fire((symbol, acct), now, score, severity):
                continue
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
                             "memory_ms": tau, "history": "none: first seen in this window" if normal is None
                             else f"known for {now - int(first[i])} ms"},
                "ratio_to_normal": round(ratio, 3) if ratio is not None else None,
                "depth_near_touch": round(depth_near, 2),
                "thresholds": {"account_min_cancels": cfg.account_min_cancels,
                               "account_min_notional": cfg.account_min_notional, "account_x": cfg.account_x,
                               "account_fill_ratio": cfg.account_fill_ratio},
                "crossed": "the account's cancels in the window far above its own normal and its fills",
            }))
