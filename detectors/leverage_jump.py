"""leverage_jump: an account levering up fast, or a crowd of them on one symbol.

Per account (compact: ten doubles in an LRU-bounded table, ``max_accounts``, see
``detectors.rows``):
- leverage against the account's own EW leverage (``lev_ratio`` x and at least
  ``min_leverage``) — an account going 3x -> 25x;
- effective leverage (total notional / equity, when the equity is known) against the
  account's own EW effective leverage (``lev_ratio`` x and at least
  ``min_effective_leverage``; learned from the account's state at the end of each tick its
  positions changed in, so positions arriving together count as one, and known after
  ``MIN_EFF_OBSERVATIONS`` such ticks) — an account usually 5x on its equity opening 24x, even from
  flat (where a notional ratio has nothing to compare with) and whatever its leverage setting;
- total position notional against what it held ``window_ms`` ago (``notional_ratio`` x, at
  least ``min_notional``, and at least ``min_effective_leverage`` x the account's equity when
  known) — notional x8 within seconds; where the account's usual effective leverage is known,
  only if that is jumping too (back from a small position to the account's normal size is
  not a jump);
- margin ratio (maintenance margin / equity) crossing ``margin_ratio_warn`` after rising by
  ``margin_ratio_rise`` within ``window_ms`` — collateral eaten fast (named on the symbol of
  the account's largest position, its positions listed in detail).
An account needs ``min_history`` position events with a size before it can jump (its first
positions are its history, not a jump; a close teaches no leverage, so an account first seen
closing a position — a feed joined mid-stream — has no usual leverage yet). The score is
the largest ratio among the rules that fired (new / usual leverage, notional / notional
before), so a leverage jump is not scored by a notional ratio against nothing.

Per symbol (cohort): accounts raising leverage (``cohort_raise`` x the position they
replace, else the account's usual leverage, to at least ``min_leverage``) within
``cohort_window_ms``, against the symbol's own baseline of that count (river EW stats,
protected learning); OI-weighted leverage (sum |notional| x leverage / sum |notional|,
kept incrementally from each position and the one it replaced) and its baseline are
reported with it, as is the venue's open interest.

``on_event`` only records (the event's essentials, the OI-weighted sums, an LRU touch);
accounts and cohorts are scored at the next tick, score before learn. What waits for the
tick is bounded: at most ``max_pending`` (constructor, default ``MAX_PENDING``) events per
tick are held; past that (event time frozen, a flood within one tick) newer ones are not
scored, only counted in ``pending_dropped`` (their state updates are still made). An account
anomaly carries the event time of the position or account event that jumped.

Severity: warning; critical when the new leverage reaches ``critical_leverage``, the
notional ``critical_notional``, the margin ratio 0.95, or a cohort is 3x ``cohort_min``.
Re-arm: an account re-fires within ``cooldown_ms`` on the same symbol only if its score
doubles (levering up onto another symbol is news for that symbol: it fires); a symbol's
cohort episode ends after its condition has been clear for ``cooldown_ms`` (inside it,
only a doubled score or a higher severity fires again). Warm-up: no cohort anomaly
before ``warmup_ticks`` x ``tick_ms`` of event time on the symbol and 20 baseline ticks.

>>> from monitor.events import Position
>>> from monitor.state import MarketState
>>> st, d = MarketState(), LeverageJump()
>>> for ts, lev, size in ((1_732_400_000_000, 3.0, 1.0), (1_732_400_060_000, 3.0, 1.2), (1_732_400_061_000, 25.0, 10.0)):
...     ev = Position(account="a", symbol="X", ts=ts, size=size, entry_price=10_000.0, leverage=lev)
...     _ = st.apply(ev); d.on_event(ev, st)
>>> [(a.account, a.detail["reasons"]) for a in d.on_tick(1_732_400_061_250, st)]
[('a', ['leverage', 'notional'])]
"""

from __future__ import annotations

from collections import deque

from detectors.base import Detector, DetectorConfig
from detectors.baseline import Baseline, Cooldown
from detectors.latch import Latch
from detectors.rows import AccountRows
from monitor.events import Account, Anomaly, Position
from monitor.state import MarketState

# per-account row fields
N, LEV, NOTIONAL, BASE_NOTIONAL, BASE_TS, MR, MR_TS, TOTAL, EFF, EFF_N = range(10)
FIELDS = ("n", "lev", "notional", "base_notional", "base_ts", "mr", "mr_ts", "total", "eff", "eff_n")
# ticks an account's effective leverage must have been seen at before it counts as its usual
# (one observation says little: a calm account's book ranges over ~3x of its equity)
MIN_EFF_OBSERVATIONS = 2
NOTIONAL_EPS = 1e-3  # a running notional sum below this is float residue of a flat account, i.e. zero
MIN_BASELINE = 20  # cohort baseline ticks needed on top of the event-time warm-up
MAX_PENDING = 200_000  # events held for the next tick (a 250 ms tick at 800k position events/s)


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
    min_history: int = 1  # position events with a size an account needs before it can jump
    min_effective_leverage: float = 10.0  # notional / equity needed by a notional or effective-leverage jump
    max_accounts: int = 2_000_000  # per-account state bound; least recently updated evicted
    cohort_window_ms: int = 60_000
    cohort_min: int = 10  # accounts raising leverage on one symbol within the window
    cohort_z: float = 4.0  # ...and this far above the symbol's own baseline of that count
    cohort_raise: float = 1.5  # a raise: new leverage >= this x the previous one on the symbol
    tick_ms: int = 250  # must match [daemon] tick (warm-up is warmup_ticks x tick_ms of event time)
    warmup_ticks: int = 240  # cohort baseline ticks before a cohort anomaly
    cooldown_ms: int = 60_000


class _Sym:
    __slots__ = ("buckets", "cur", "count", "raisers", "oi_w", "oi_wl", "base", "lev_base", "first")

    def __init__(self, cfg: LeverageJumpConfig) -> None:
        self.buckets: deque[tuple[int, int]] = deque()  # (tick time, raises in that tick)
        self.cur = 0  # raises since the last tick
        self.count = 0  # raises within the window (running sum of the buckets)
        self.raisers: deque[tuple[str, float, float]] = deque(maxlen=64)  # latest (account, from, to)
        self.oi_w = 0.0  # sum of |notional|
        self.oi_wl = 0.0  # sum of |notional| * leverage
        self.base = Baseline(0.01, MIN_BASELINE, std_floor=1.0)
        self.lev_base = Baseline(0.01, MIN_BASELINE, std_floor=0.5)
        self.first = 0


class LeverageJump(Detector):
    name = "leverage_jump"
    Config = LeverageJumpConfig
    consumes = (Position, Account)
    max_pending = MAX_PENDING  # class defaults: checkpoints from before the bound still resume
    pending_dropped = 0
    check_params = [{}, {"max_accounts": 16, "warmup_ticks": 8, "cohort_min": 3, "cooldown_ms": 1_000},
                    {"max_accounts": 4, "min_history": 0, "lev_ratio": 1.5, "min_leverage": 2.0, "fading": 0.9,
                     "cohort_window_ms": 5_000, "warmup_ticks": 2}]

    def __init__(self, config: LeverageJumpConfig | None = None, max_pending: int = MAX_PENDING) -> None:
        super().__init__(config)
        self.max_pending = max_pending
        self.pending_dropped = 0  # events past max_pending within one tick: recorded, not scored
        self.accounts = AccountRows(FIELDS, self.config.max_accounts)
        self._syms: dict[str, _Sym] = {}
        # per (account, symbol): as many keys as accounts kept, the least recently fired forgotten
        self._cool = Cooldown(self.config.cooldown_ms, 2.0, max_keys=self.config.max_accounts)
        self._pending: list[tuple] = []  # events since the last tick, in order
        self._latch = Latch(self.config.cooldown_ms, 2.0)

    @property
    def evicted(self) -> int:
        return self.accounts.evicted

    def bounds(self) -> dict[str, tuple[int, int]]:
        return {"accounts": (len(self.accounts), self.accounts.cap),
                "latch": (len(self._latch), self._latch.max_keys),
                "cooldown": (len(self._cool), self._cool.max_keys),
                "pending": (len(self._pending), self.max_pending)}

    def symbol_maps(self) -> dict[str, int]:
        return {"symbols": len(self._syms)}

    # -- events: O(1), recording only ----------------------------------------------------
    def on_event(self, ev, state: MarketState) -> None:
        acct = str(ev.account)
        rows = self.accounts
        i = rows.get(acct)
        if i is None:  # a new row keys by the book's string for the id, shared rather than copied
            i = rows.touch(state.accounts.name(acct) or acct)
        else:
            rows.lru.move_to_end(i)
        full = len(self._pending) >= self.max_pending
        if type(ev) is Account:
            if ev.maintenance_margin is not None:
                if full:
                    self.pending_dropped += 1
                    return
                self._pending.append((acct, None, ev.equity, ev.maintenance_margin, ev.ts))
            return
        sym = self._syms.get(ev.symbol)
        if sym is None:
            sym = self._syms[ev.symbol] = _Sym(self.config)
        prev = state.last_prev_position
        if prev is not None:  # OI-weighted leverage of the symbol, kept incrementally
            w = prev.notional()
            sym.oi_w -= w
            sym.oi_wl -= w * prev.leverage
        if ev.size:
            w = abs(ev.size) * ev.entry_price
            sym.oi_w += w
            sym.oi_wl += w * ev.leverage
        # the account's total notional after this event, kept as a running sum (O(1));
        # a fresh row (new or evicted account) starts from the state's positions once
        cols = self.accounts.cols
        if cols[N][i] == 0 and cols[TOTAL][i] == 0.0:
            total = state.accounts.total_notional(acct)
        else:
            total = cols[TOTAL][i] + abs(ev.size) * ev.entry_price - (prev.notional() if prev else 0.0)
            if total < NOTIONAL_EPS:
                total = 0.0
        cols[TOTAL][i] = total
        if full:
            self.pending_dropped += 1
            return
        self._pending.append((acct, ev.symbol, ev.leverage, prev.leverage if prev is not None else None,
                              ev.ts, ev.size, ev.margin_mode, total))

    # -- ticks -----------------------------------------------------------------------------
    def on_tick(self, now: int, state: MarketState) -> list[Anomaly]:
        out: list[Anomaly] = []
        if self._pending:
            pending, self._pending = self._pending, []
            # an account's usual effective leverage learns its state at the end of the tick:
            # positions arriving together (a first appearance) are one observation
            last = {item[0]: k for k, item in enumerate(pending) if item[1] is not None}
            for k, item in enumerate(pending):
                if item[1] is None:
                    self._margin(item, state, out)
                else:
                    self._position(item, state, out, last[item[0]] == k)
        cfg = self.config
        horizon = now - cfg.cohort_window_ms
        for symbol, s in self._syms.items():
            if not s.first:
                s.first = now
            s.buckets.append((now, s.cur))
            s.count += s.cur
            s.cur = 0
            while s.buckets[0][0] <= horizon:
                s.count -= s.buckets.popleft()[1]
            count = s.count
            z = s.base.observe(float(count), protect_above=cfg.cohort_z, one_sided=True)
            oi_lev = s.oi_wl / s.oi_w if s.oi_w > 1e-9 else 0.0
            z_lev = s.lev_base.observe(oi_lev, protect_above=cfg.cohort_z, one_sided=True)
            warm = now - s.first >= cfg.warmup_ticks * cfg.tick_ms and s.base.ready
            if not warm or count < cfg.cohort_min or z < cfg.cohort_z:
                continue
            severity = "critical" if count >= 3 * cfg.cohort_min else "warning"
            if not self._latch.fire(symbol, now, z, severity):
                continue
            marks = state.marks.get(symbol)
            oi = marks.open_interest if marks is not None else None
            out.append(Anomaly.make(
                "leverage_jump", now, z, severity, symbol=symbol,
                detail={"scope": "cohort", "accounts_raising": count, "window_ms": cfg.cohort_window_ms,
                        "z": round(z, 3), "baseline": s.base.snapshot(),
                        "oi_weighted_leverage": round(oi_lev, 3), "oi_weighted_leverage_z": round(z_lev, 3),
                        "oi_weighted_leverage_baseline": s.lev_base.snapshot(),
                        "open_notional": round(s.oi_w, 2), "venue_open_interest": oi,
                        "latest_raisers": [{"account": a, "from": f, "to": t} for a, f, t in list(s.raisers)[-10:]],
                        "thresholds": {"cohort_min": cfg.cohort_min, "cohort_z": cfg.cohort_z,
                                       "cohort_raise": cfg.cohort_raise, "min_leverage": cfg.min_leverage},
                        "crossed": "accounts raising leverage on this symbol far above its usual count"}))
        return out

    def _allow(self, acct: str, ts: int, score: float, symbol: str | None = None) -> bool:
        """Per-account re-fire rule: quiet for cooldown_ms per (account, symbol) (margin
        ratio: the account alone) unless the score doubles."""
        return self._cool.allow((acct, symbol), ts, score)

    def _position(self, item: tuple, state: MarketState, out: list[Anomaly], final: bool = True) -> None:
        cfg = self.config
        acct, symbol, lev, prev_lev, ts, size, margin_mode, notional = item
        sym = self._syms[symbol]
        i = self.accounts.get(acct)  # touched at the event; None if evicted since (within this tick)
        if i is None:
            if prev_lev is not None and size and lev >= cfg.cohort_raise * max(prev_lev, 1.0) \
                    and lev >= cfg.min_leverage:
                sym.cur += 1
                sym.raisers.append((acct, prev_lev, lev))
            return
        cols = self.accounts.cols
        n, usual, notional_col, base_n, base_ts = cols[N], cols[LEV], cols[NOTIONAL], cols[BASE_NOTIONAL], cols[BASE_TS]
        usual_eff, eff_n = cols[EFF], cols[EFF_N]
        st = state.accounts.get(acct)
        # a raise on this symbol: vs the position it replaces, or (a new one) the account's usual leverage
        ref = prev_lev if prev_lev is not None else (usual[i] if n[i] else None)
        if ref is not None and size and lev >= cfg.cohort_raise * max(ref, 1.0) and lev >= cfg.min_leverage:
            sym.cur += 1
            sym.raisers.append((acct, ref, lev))
        effective = notional / st.equity if st is not None and st.equity else None
        if n[i] >= cfg.min_history and size:
            reasons = []
            if lev >= cfg.min_leverage and lev >= cfg.lev_ratio * max(usual[i], 1.0):
                reasons.append("leverage")
            in_window = ts - base_ts[i] <= cfg.window_ms
            base = base_n[i] if in_window else notional_col[i]
            eff_known = effective is not None and eff_n[i] >= MIN_EFF_OBSERVATIONS and usual_eff[i] > 0
            eff_jump = eff_known and effective >= cfg.lev_ratio * usual_eff[i]
            if base > 0 and notional >= cfg.min_notional and notional >= cfg.notional_ratio * base \
                    and (effective is None or effective >= cfg.min_effective_leverage) \
                    and (eff_jump or not eff_known):
                reasons.append("notional")
            if eff_jump and effective >= cfg.min_effective_leverage and notional >= cfg.min_notional:
                reasons.append("effective_leverage")
            if reasons:
                score = max(lev / max(usual[i], 1.0) if "leverage" in reasons else 0.0,
                            notional / base if "notional" in reasons else 0.0,
                            effective / usual_eff[i] if "effective_leverage" in reasons else 0.0)
                critical = lev >= cfg.critical_leverage or notional >= cfg.critical_notional
                if self._allow(acct, ts, score, symbol):
                    out.append(Anomaly.make(
                        "leverage_jump", ts, score, "critical" if critical else "warning",
                        symbol=symbol, account=acct,
                        detail={"scope": "account", "reasons": reasons, "leverage": lev,
                                "effective_leverage": round(effective, 3) if effective is not None else None,
                                "usual_leverage": round(usual[i], 3),
                                "usual_effective_leverage": round(usual_eff[i], 3) if usual_eff[i] else None,
                                "notional": round(notional, 2),
                                "notional_before": round(base, 2), "window_ms": cfg.window_ms,
                                "margin_mode": margin_mode, "history": int(n[i]),
                                "thresholds": {"lev_ratio": cfg.lev_ratio, "min_leverage": cfg.min_leverage,
                                               "notional_ratio": cfg.notional_ratio,
                                               "min_notional": cfg.min_notional,
                                               "min_effective_leverage": cfg.min_effective_leverage},
                                "crossed": " and ".join(
                                    {"leverage": "leverage far above the account's usual",
                                     "notional": "notional far above what it held a window ago",
                                     "effective_leverage": "notional / equity far above the account's usual"}[r]
                                    for r in reasons)}))
        # learn: the account's usual leverage (from positions with a size: the history the
        # rules need), and its notional as of window_ms ago
        if size:
            usual[i] = lev if n[i] == 0 else (1 - cfg.fading) * usual[i] + cfg.fading * lev
            n[i] += 1
            if effective is not None and final:
                usual_eff[i] = effective if not usual_eff[i] else (1 - cfg.fading) * usual_eff[i] + cfg.fading * effective
                eff_n[i] += 1
        if ts - base_ts[i] > cfg.window_ms:
            base_n[i], base_ts[i] = notional_col[i], ts
        notional_col[i] = notional

    def _margin(self, item: tuple, state: MarketState, out: list[Anomaly]) -> None:
        cfg = self.config
        acct, _, equity, mm, ts = item
        i = self.accounts.get(acct)
        if i is None:
            return  # evicted since the event (more than max_accounts accounts within one tick)
        cols = self.accounts.cols
        mr = mm / equity if equity > 0 else float("inf")
        prev, prev_ts = cols[MR][i], cols[MR_TS][i]
        if mr >= cfg.margin_ratio_warn and prev_ts and ts - prev_ts <= cfg.window_ms \
                and mr - prev >= cfg.margin_ratio_rise and self._allow(acct, ts, min(mr, 1e6)):
            # named on the symbol of its largest position: where the collateral is at stake
            st = state.accounts.get(acct)
            held = sorted(((p.notional(), sym) for sym, p in st.positions.items()), reverse=True) if st else []
            out.append(Anomaly.make(
                "leverage_jump", ts, min(mr, 1e6), "critical" if mr >= 0.95 else "warning", account=acct,
                symbol=held[0][1] if held else None,
                detail={"scope": "account", "reasons": ["margin_ratio"], "margin_ratio": round(min(mr, 1e6), 4),
                        "positions": [{"symbol": sym, "notional": round(n, 2)} for n, sym in held[:5]],
                        "margin_ratio_before": round(prev, 4), "equity": equity,
                        "maintenance_margin": mm, "window_ms": cfg.window_ms,
                        "thresholds": {"margin_ratio_warn": cfg.margin_ratio_warn,
                                       "margin_ratio_rise": cfg.margin_ratio_rise},
                        "crossed": "maintenance margin eating the account's equity fast"}))
        if ts - prev_ts > cfg.window_ms or mr < prev:
            cols[MR][i], cols[MR_TS][i] = mr, ts
