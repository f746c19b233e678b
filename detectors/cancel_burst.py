"""cancel_burst: cancels out of proportion to trading and to the symbol's own normal.

Per symbol, over a rolling window of event time (``window_ms``, in tick buckets):
cancel count and cancelled notional, new orders, trades and traded notional, and the
notional pulled within ``near_bps`` of the touch. With L3 ``order`` events these are
exact and attributed to accounts; on L2-only feeds (public venues) the cancelled
notional is inferred as liquidity taken off levels that trades do not explain.

Two robust baselines (EW mean/variance in log space, river ``stats``) judge it:
``z_cancel`` of log cancelled notional and ``z_ratio`` of log(cancelled / traded). A burst
needs both — a benign surge where trades, orders and cancels all rise together moves
the first but not the second. A shallow river ``HalfSpaceTrees`` on min-max-scaled
features gives a second opinion, reported in ``detail`` and never deciding alone.

Severity: warning when both z cross their thresholds (and the absolute floors);
critical when both exceed ``z_critical`` or when the notional pulled near the touch in
the window exceeds what rests there now. A symbol re-fires within ``cooldown_ms`` only if
its score doubles.
"""

from __future__ import annotations

import math
from collections import deque

from river import anomaly, compose, preprocessing

from detectors.base import Detector, DetectorConfig
from detectors.baseline import Baseline, Cooldown
from monitor.events import Anomaly, Order, Trade
from monitor.state import MarketState

# indices into a tick bucket
CANCELS, CANCEL_N, NEWS, NEW_N, TRADES, TRADE_N, NEAR_N = range(7)
MAX_ACCOUNTS_PER_BUCKET = 10_000


class CancelBurstConfig(DetectorConfig, kw_only=True):
    window_ms: int = 2_000  # features are sums over this much event time
    tick_ms: int = 250  # must match [daemon] tick; buckets per window = window_ms / tick_ms
    near_bps: float = 10.0  # "near the touch": within this of the best price on its side
    z_threshold: float = 4.0  # cancelled notional vs the symbol's baseline (log space)
    ratio_z_threshold: float = 3.0  # cancel-to-trade ratio vs its baseline (log space)
    z_critical: float = 8.0
    min_cancels: int = 20  # L3: at least this many cancels in the window
    min_notional: float = 50_000.0  # at least this much cancelled notional in the window
    warmup_ticks: int = 240  # ticks of baseline before any anomaly (60 s at 250 ms)
    fading: float = 0.02  # EW weight of the newest tick
    cooldown_ms: int = 30_000
    top_accounts: int = 5
    account_share: float = 0.5  # an account with this share of the cancels is named on the anomaly
    hst: bool = True  # river HalfSpaceTrees second opinion in detail
    l2_infer: bool = True  # infer cancels from book deltas when a symbol has no L3 orders


class _Sym:
    __slots__ = ("cur", "accts", "window", "acct_window", "pulled", "pulled_near", "l3", "ticks",
                 "base_c", "base_r", "model")

    def __init__(self, cfg: CancelBurstConfig) -> None:
        n = max(1, cfg.window_ms // cfg.tick_ms)
        self.cur = [0.0] * 7
        self.accts: dict[str, float] = {}
        self.window: deque[list[float]] = deque(maxlen=n)
        self.acct_window: deque[dict[str, float]] = deque(maxlen=n)
        self.pulled = self.pulled_near = None  # the book's running totals at the last tick
        self.l3 = False
        self.ticks = 0
        self.base_c = Baseline(cfg.fading, cfg.warmup_ticks, std_floor=0.25)
        self.base_r = Baseline(cfg.fading, cfg.warmup_ticks, std_floor=0.25)
        self.model = (compose.Pipeline(preprocessing.MinMaxScaler(),
                                       anomaly.HalfSpaceTrees(n_trees=10, height=6, window_size=250, seed=7))
                      if cfg.hst else None)


class CancelBurst(Detector):
    name = "cancel_burst"
    Config = CancelBurstConfig
    consumes = (Order, Trade)

    def __init__(self, config: CancelBurstConfig | None = None) -> None:
        super().__init__(config)
        self._syms: dict[str, _Sym] = {}
        self._cooldown = Cooldown(self.config.cooldown_ms)

    def _sym(self, symbol: str) -> _Sym:
        s = self._syms.get(symbol)
        if s is None:
            s = self._syms[symbol] = _Sym(self.config)
        return s

    def on_event(self, ev, state: MarketState) -> None:
        s = self._syms.get(ev.symbol) or self._sym(ev.symbol)
        cur = s.cur
        if type(ev) is Trade:
            cur[TRADES] += 1
            cur[TRADE_N] += ev.price * ev.size
            return
        s.l3 = True
        action = ev.action
        if action == "cancel":
            n = ev.price * ev.size
            cur[CANCELS] += 1
            cur[CANCEL_N] += n
            book = state.books.get(ev.symbol)
            if book is not None:
                near = self.config.near_bps / 1e4
                if ev.side == "buy":
                    bb = book._best_bid
                    if bb is not None and ev.price >= bb * (1 - near):
                        cur[NEAR_N] += n
                else:
                    ba = book._best_ask
                    if ba is not None and ev.price <= ba * (1 + near):
                        cur[NEAR_N] += n
            acct = ev.account
            accts = s.accts
            if acct in accts:
                accts[acct] += n
            elif len(accts) < MAX_ACCOUNTS_PER_BUCKET:
                accts[acct] = n
        elif action == "new":
            cur[NEWS] += 1
            cur[NEW_N] += ev.price * ev.size

    def on_tick(self, now: int, state: MarketState) -> list:
        out = []
        for symbol, s in self._syms.items():
            a = self._tick_symbol(symbol, s, now, state)
            if a is not None:
                out.append(a)
        return out

    def _tick_symbol(self, symbol: str, s: _Sym, now: int, state: MarketState):
        cfg = self.config
        book = state.books.get(symbol)
        cur = s.cur
        if book is not None:
            book.near_bps = cfg.near_bps
            if s.pulled is not None and not s.l3 and cfg.l2_infer:
                # L2 only: liquidity taken off levels that trades do not explain.
                pulled = book.pulled - s.pulled
                near = book.pulled_near - s.pulled_near
                cur[CANCEL_N] += max(0.0, pulled - cur[TRADE_N])
                cur[NEAR_N] += max(0.0, near - cur[TRADE_N])
            s.pulled, s.pulled_near = book.pulled, book.pulled_near
        s.window.append(cur)
        s.acct_window.append(s.accts)
        s.cur = [0.0] * 7
        s.accts = {}
        s.ticks += 1
        if len(s.window) < s.window.maxlen:
            return None
        w = [sum(b[i] for b in s.window) for i in range(7)]
        if book is not None and not book.reliable:
            return None  # a resyncing book's deltas say nothing about cancels
        x_c = math.log1p(w[CANCEL_N])
        x_r = x_c - math.log1p(w[TRADE_N])
        z_c = s.base_c.observe(x_c, protect_above=cfg.z_threshold)
        z_r = s.base_r.observe(x_r, protect_above=cfg.ratio_z_threshold)
        hst = self._second_opinion(s, w)
        if not (s.base_c.ready and s.base_r.ready):
            return None
        if z_c < cfg.z_threshold or z_r < cfg.ratio_z_threshold or w[CANCEL_N] < cfg.min_notional:
            return None
        if s.l3 and w[CANCELS] < cfg.min_cancels:
            return None
        score = min(z_c, z_r)
        if not self._cooldown.allow(symbol, now, score):
            return None
        return self._anomaly(symbol, s, now, state, w, z_c, z_r, score, hst)

    def _second_opinion(self, s: _Sym, w: list[float]) -> float | None:
        if s.model is None:
            return None
        x = {"cancel": math.log1p(w[CANCEL_N]), "trade": math.log1p(w[TRADE_N]),
             "new": math.log1p(w[NEW_N]), "near": math.log1p(w[NEAR_N])}
        score = s.model.score_one(x)
        s.model.learn_one(x)
        return round(score, 4)

    def _anomaly(self, symbol, s, now, state, w, z_c, z_r, score, hst) -> Anomaly:
        cfg = self.config
        book = state.books.get(symbol)
        depth_near = sum(book.depth_within_bps(cfg.near_bps)) if book is not None else None
        critical = score >= cfg.z_critical or (depth_near is not None and w[NEAR_N] > depth_near > 0)
        totals: dict[str, float] = {}
        for bucket in s.acct_window:
            for acct, n in bucket.items():
                totals[acct] = totals.get(acct, 0.0) + n
        top = sorted(totals.items(), key=lambda kv: (-kv[1], str(kv[0])))[: cfg.top_accounts]
        cancel_n = w[CANCEL_N] or 1.0
        top_accounts = [{"account": str(a), "cancelled_notional": round(n, 2), "share": round(n / cancel_n, 4)}
                        for a, n in top]
        account = top_accounts[0]["account"] if top_accounts and top_accounts[0]["share"] >= cfg.account_share else None
        detail = {
            "mode": "L3" if s.l3 else "L2-inferred",
            "window_ms": cfg.window_ms,
            "cancels": int(w[CANCELS]) if s.l3 else None,
            "cancelled_notional": round(w[CANCEL_N], 2),
            "new_orders": int(w[NEWS]),
            "trades": int(w[TRADES]),
            "traded_notional": round(w[TRADE_N], 2),
            "cancel_to_trade": round(w[CANCEL_N] / w[TRADE_N], 3) if w[TRADE_N] else None,
            "pulled_near_touch": round(w[NEAR_N], 2),
            "depth_near_touch": round(depth_near, 2) if depth_near is not None else None,
            "near_bps": cfg.near_bps,
            "z_cancel": round(z_c, 3),
            "z_ratio": round(z_r, 3),
            "thresholds": {"z_cancel": cfg.z_threshold, "z_ratio": cfg.ratio_z_threshold,
                           "z_critical": cfg.z_critical, "min_notional": cfg.min_notional},
            "baseline_log_cancelled": s.base_c.snapshot(),
            "baseline_log_ratio": s.base_r.snapshot(),
            "hst_score": hst,
            "top_accounts": top_accounts,
        }
        return Anomaly.make("cancel_burst", now, score, "critical" if critical else "warning",
                            symbol=symbol, account=account, detail=detail)
