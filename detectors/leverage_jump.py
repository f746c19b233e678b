"""leverage_jump: an account levering up fast, or a crowd of them on one symbol.

Per account (compact: five floats in an LRU-bounded map, ``max_accounts``):
- leverage against the account's own EW leverage (``lev_ratio`` x and at least
  ``min_leverage``) — an account going 3x -> 25x;
- total position notional against what it held ``window_ms`` ago (``notional_ratio`` x, at
  least ``min_notional``, and at least ``min_effective_leverage`` x the account's equity when
  known) — notional x8 within seconds;
- margin ratio (maintenance margin / equity) crossing ``margin_ratio_warn`` after rising by
  ``margin_ratio_rise`` within ``window_ms`` — collateral eaten fast.
These are O(1) comparisons at the position/account event; the anomaly is emitted at
the next tick with the event's time.

Per symbol (cohort): accounts raising leverage (``cohort_raise`` x, to at least
``min_leverage``) within ``cohort_window_ms``, against the symbol's own baseline of that
count (river EW stats); OI-weighted leverage, kept incrementally, is reported with it.

Severity: warning; critical when the new leverage reaches ``critical_leverage``, the
notional ``critical_notional``, the margin ratio 0.95, or a cohort is 3x ``cohort_min``.
An account or symbol re-fires within ``cooldown_ms`` only if its score doubles.
"""

from __future__ import annotations

from collections import OrderedDict, deque

from detectors.base import Detector, DetectorConfig
from detectors.baseline import Baseline, Cooldown
from monitor.events import Account, Anomaly, Position
from monitor.state import MarketState


class LeverageJumpConfig(DetectorConfig, kw_only=True):
    lev_ratio: float = 3.0  # new leverage vs the account's EW leverage
    min_leverage: float = 15.0  # ...and at least this
    notional_ratio: float = 8.0  # total notional vs window_ms ago
    min_notional: float = 100_000.0  # ...and at least this
    window_ms: int = 60_000
    margin_ratio_warn: float = 0.8  # maintenance margin / equity
    margin_ratio_rise: float = 0.3  # ...having risen by this within window_ms
    critical_leverage: float = 50.0
    critical_notional: float = 5_000_000.0
    fading: float = 0.3  # EW weight of the newest leverage in an account's history
    min_history: int = 1  # position events an account needs before it can jump
    min_effective_leverage: float = 10.0  # a notional jump counts when notional / equity reaches this
    max_accounts: int = 2_000_000  # per-account state bound; least recently updated evicted
    cohort_window_ms: int = 60_000
    cohort_min: int = 10  # accounts raising leverage on one symbol within the window
    cohort_z: float = 4.0  # ...and this far above the symbol's own baseline of that count
    cohort_raise: float = 1.5  # a raise: new leverage >= this x the previous one on the symbol
    tick_ms: int = 250  # must match [daemon] tick
    warmup_ticks: int = 240  # cohort baseline ticks before a cohort anomaly
    cooldown_ms: int = 60_000


class _Acct:
    __slots__ = ("lev", "notional", "base_notional", "base_ts", "mr", "mr_ts", "n")

    def __init__(self) -> None:
        self.lev = 0.0
        self.notional = 0.0
        self.base_notional = 0.0
        self.base_ts = 0
        self.mr = 0.0
        self.mr_ts = 0
        self.n = 0

    def __getstate__(self):
        return tuple(getattr(self, k) for k in self.__slots__)

    def __setstate__(self, s):
        for k, v in zip(self.__slots__, s):
            setattr(self, k, v)


class _Sym:
    __slots__ = ("buckets", "cur", "raisers", "oi_w", "oi_wl", "base", "lev_base")

    def __init__(self, n: int, cfg: LeverageJumpConfig) -> None:
        self.buckets: deque[int] = deque(maxlen=n)
        self.cur = 0
        self.raisers: deque[str] = deque(maxlen=64)  # the latest raisers, for evidence
        self.oi_w = 0.0  # sum of |notional|
        self.oi_wl = 0.0  # sum of |notional| * leverage
        self.base = Baseline(0.01, cfg.warmup_ticks, std_floor=1.0)
        self.lev_base = Baseline(0.01, cfg.warmup_ticks, std_floor=0.5)


class LeverageJump(Detector):
    name = "leverage_jump"
    Config = LeverageJumpConfig
    consumes = (Position, Account)

    def __init__(self, config: LeverageJumpConfig | None = None) -> None:
        super().__init__(config)
        self.accounts: OrderedDict[str, _Acct] = OrderedDict()
        self.evicted = 0
        self._syms: dict[str, _Sym] = {}
        self._pending: list[Anomaly] = []
        self._cooldown = Cooldown(self.config.cooldown_ms)

    def _acct(self, account: str) -> _Acct:
        rec = self.accounts.get(account)
        if rec is None:
            rec = self.accounts[account] = _Acct()
            if len(self.accounts) > self.config.max_accounts:
                self.accounts.popitem(last=False)
                self.evicted += 1
        else:
            self.accounts.move_to_end(account)
        return rec

    def on_event(self, ev, state: MarketState) -> None:
        if type(ev) is Position:
            self._position(ev, state)
        else:
            self._account(ev)

    def _position(self, ev: Position, state: MarketState) -> None:
        cfg = self.config
        acct = str(ev.account)
        rec = self._acct(acct)
        st = state.accounts.get(acct)
        notional = sum(p.notional() for p in st.positions.values()) if st is not None else 0.0
        prev = state.last_prev_position
        sym = self._syms.get(ev.symbol)
        if sym is None:
            sym = self._syms[ev.symbol] = _Sym(max(1, cfg.cohort_window_ms // cfg.tick_ms), cfg)
        # OI-weighted leverage of the symbol, kept incrementally
        if prev is not None:
            w = prev.notional()
            sym.oi_w -= w
            sym.oi_wl -= w * prev.leverage
        if ev.size:
            w = abs(ev.size) * ev.entry_price
            sym.oi_w += w
            sym.oi_wl += w * ev.leverage
        # a raise on this symbol: vs the position it replaces, or (a new one) the account's usual leverage
        ref = prev.leverage if prev is not None else (rec.lev if rec.n else None)
        if ref is not None and ev.size and ev.leverage >= cfg.cohort_raise * max(ref, 1.0) \
                and ev.leverage >= cfg.min_leverage:
            sym.cur += 1
            sym.raisers.append(acct)
        if rec.n >= cfg.min_history and ev.size:
            reasons = []
            if ev.leverage >= cfg.min_leverage and ev.leverage >= cfg.lev_ratio * max(rec.lev, 1.0):
                reasons.append("leverage")
            in_window = ev.ts - rec.base_ts <= cfg.window_ms
            base = rec.base_notional if in_window else rec.notional
            effective = notional / st.equity if st is not None and st.equity else None
            if base > 0 and notional >= cfg.min_notional and notional >= cfg.notional_ratio * base \
                    and (effective is None or effective >= cfg.min_effective_leverage):
                reasons.append("notional")
            if reasons:
                score = max(ev.leverage / max(rec.lev, 1.0), notional / max(base, 1.0))
                critical = ev.leverage >= cfg.critical_leverage or notional >= cfg.critical_notional
                if self._cooldown.allow(acct, ev.ts, score):
                    self._pending.append(Anomaly.make(
                        "leverage_jump", ev.ts, score, "critical" if critical else "warning",
                        symbol=ev.symbol, account=acct,
                        detail={"scope": "account", "reasons": reasons, "leverage": ev.leverage,
                                "effective_leverage": round(effective, 3) if effective is not None else None,
                                "usual_leverage": round(rec.lev, 3), "notional": round(notional, 2),
                                "notional_before": round(base, 2), "window_ms": cfg.window_ms,
                                "margin_mode": ev.margin_mode,
                                "thresholds": {"lev_ratio": cfg.lev_ratio, "min_leverage": cfg.min_leverage,
                                               "notional_ratio": cfg.notional_ratio,
                                               "min_notional": cfg.min_notional}}))
        # learn: the account's usual leverage, and its notional as of window_ms ago
        if ev.size:
            rec.lev = ev.leverage if rec.n == 0 else (1 - cfg.fading) * rec.lev + cfg.fading * ev.leverage
        if ev.ts - rec.base_ts > cfg.window_ms:
            rec.base_notional, rec.base_ts = rec.notional, ev.ts
        rec.notional = notional
        rec.n += 1

    def _account(self, ev: Account) -> None:
        cfg = self.config
        if ev.maintenance_margin is None:
            return
        acct = str(ev.account)
        rec = self._acct(acct)
        mr = ev.maintenance_margin / ev.equity if ev.equity > 0 else float("inf")
        if mr >= cfg.margin_ratio_warn and rec.mr_ts and ev.ts - rec.mr_ts <= cfg.window_ms \
                and mr - rec.mr >= cfg.margin_ratio_rise and self._cooldown.allow(("mr", acct), ev.ts, mr):
            self._pending.append(Anomaly.make(
                "leverage_jump", ev.ts, min(mr, 1e6), "critical" if mr >= 0.95 else "warning", account=acct,
                detail={"scope": "account", "reasons": ["margin_ratio"], "margin_ratio": round(min(mr, 1e6), 4),
                        "margin_ratio_before": round(rec.mr, 4), "equity": ev.equity,
                        "maintenance_margin": ev.maintenance_margin, "window_ms": cfg.window_ms}))
        if ev.ts - rec.mr_ts > cfg.window_ms or mr < rec.mr:
            rec.mr, rec.mr_ts = mr, ev.ts

    def flush(self, state: MarketState) -> list[Anomaly]:
        out, self._pending = self._pending, []
        return out

    def on_tick(self, now: int, state: MarketState) -> list[Anomaly]:
        out = self.flush(state)
        cfg = self.config
        for symbol, s in self._syms.items():
            s.buckets.append(s.cur)
            s.cur = 0
            count = sum(s.buckets)
            z = s.base.observe(float(count), protect_above=cfg.cohort_z)
            oi_lev = s.oi_wl / s.oi_w if s.oi_w > 0 else 0.0
            s.lev_base.observe(oi_lev, protect_above=cfg.cohort_z)
            if not s.base.ready or count < cfg.cohort_min or z < cfg.cohort_z:
                continue
            if not self._cooldown.allow(("cohort", symbol), now, float(count)):
                continue
            out.append(Anomaly.make(
                "leverage_jump", now, z, "critical" if count >= 3 * cfg.cohort_min else "warning", symbol=symbol,
                detail={"scope": "cohort", "accounts_raising": count, "window_ms": cfg.cohort_window_ms,
                        "z": round(z, 3), "baseline": s.base.snapshot(),
                        "oi_weighted_leverage": round(oi_lev, 3), "oi_weighted_leverage_baseline": s.lev_base.snapshot(),
                        "open_notional": round(s.oi_w, 2), "latest_raisers": list(s.raisers)[-10:],
                        "thresholds": {"cohort_min": cfg.cohort_min, "cohort_z": cfg.cohort_z,
                                       "cohort_raise": cfg.cohort_raise}}))
        return out
