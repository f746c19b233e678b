"""leverage_jump: an account levering up fast, or a crowd of them on one symbol.

What is learned, and how it is bounded:

- per account (eleven doubles in an LRU-bounded table, ``max_accounts``, see
  ``detectors.rows``): when it was first seen, its position changes, the highest leverage
  it has used on any symbol, its usual (EW) effective leverage (total notional / equity),
  its total notional now and as of ``window_ms`` ago, its last margin ratio;
- per (account, symbol) (two doubles in a second LRU table, ``max_positions``, least
  recently changed forgotten): how many changes it made there and its usual (EW) leverage
  there. An account at 20x on BTC and 3x on ETH has two usual leverages, not one blend.

Only a *change* is news: a position re-published with the size and leverage it already had
(venues re-send open positions on a timer) is neither learned nor scored.

Account rules. None fires before the account has been seen for ``account_warmup_ms`` of
event time and made ``min_history`` position changes with a size (its first positions are
its history, not a jump; a close teaches nothing), and each has a USD floor,
``min_notional``:

- leverage: the new leverage on a symbol is ``lev_ratio`` x the account's usual leverage on
  that symbol (on a symbol new to the account: the highest it has used anywhere) and at
  least ``min_leverage``, on a position of at least ``min_notional``;
- notional: the account's total notional is ``notional_ratio`` x what it held ``window_ms``
  ago, at least ``min_notional`` and (equity known) ``min_effective_leverage`` x its equity;
  where the account's usual effective leverage is known, only if that jumps too (back from
  a small position to the account's normal size is not a jump);
- effective leverage: total notional / equity at least ``min_effective_leverage`` (the risk
  level) from flat (nothing held ``window_ms`` ago), and ``lev_ratio`` x the account's usual
  where that is known (after ``MIN_EFF_OBSERVATIONS`` ticks its positions changed in:
  positions arriving together count once), on at least ``min_notional``;
- margin ratio: maintenance margin / equity crossing ``margin_ratio_warn`` after rising by
  ``margin_ratio_rise`` within ``window_ms``, with at least ``min_notional`` held. An account
  with no equity left under open positions is reported as such (``equity_exhausted``, score
  ``MR_SCORE_CAP``, never infinite); one with nothing left open (liquidated, flat) is not
  reported at all. Named on the symbol of the position the account changed last if that
  was within ``window_ms`` (what moved its margin), else of its largest position.

What fires on its own: the notional rule, the leverage rule on a symbol the account has a
history on, the effective-leverage rule from flat. A high leverage on a symbol new to the
account, or a higher effective leverage alone, only supports them: that is how calm accounts
with per-symbol settings (20x on one symbol, 3x on another) open their usual positions.

An account's trips within one tick are one anomaly (the strongest, the other symbols in
``detail["symbols"]``); it re-fires within ``cooldown_ms`` only if its score doubles. Its
score is the largest ratio among the rules that fired (new / usual leverage, notional /
notional before, effective / usual effective leverage, the margin ratio).

Symbol episodes (one story, one anomaly). A single account acting alone keeps its own
anomaly. When ``fold_min`` accounts trip account rules on one symbol within ``episode_ms``
(a cohort levering up, a cluster forming, margin ratios rising as a cascade moves the
price), that is one symbol-level anomaly (``scope: "accounts"``, no account) and every
further trip there — and a trip naming it, within ``window_ms``, by an account folded in for
tripping there — is folded into it: its accounts are listed in ``detail`` (the top
``TOP_ACCOUNTS`` by notional, with the count). The episode lasts until nothing happens on the symbol for ``episode_ms``; inside
it only a higher severity fires again (critical: a critical account in it, or
3 x ``cohort_min`` accounts).

Cohort. Accounts raising leverage on one symbol (a position at ``cohort_raise`` x the one it
replaces, else the account's usual there, else the highest it has used, to at least
``min_leverage``; warm accounts only) are counted once each over the last
``cohort_window_ms`` (5 minutes by default: cohorts build over 30 s to several minutes, and
a window shorter than the build-up sees only a slice of it; at most ``MAX_RAISERS`` per
symbol, oldest dropped). It fires on the LEVEL: ``cohort_min`` accounts raising, with at
least ``cohort_min_notional`` USD of positions raised (``scope: "cohort"``; the same symbol
episode as above). A slow baseline of that count per symbol (EW, time constant
``cohort_baseline_ms`` of event time; not learned while an episode is open on the symbol)
only sets severity: critical when the count reaches 3 x ``cohort_min`` and is also
``cohort_z`` above the symbol's usual (or the baseline is still warming up). OI-weighted
leverage (sum |notional| x leverage / sum |notional|, kept incrementally from each position
and the one it replaced) and its baseline are reported with it, as is the venue's open
interest. No cohort before ``warmup_ticks`` x ``tick_ms`` of event time on the symbol.

``on_event`` only records (the event's essentials, the OI-weighted sums, two LRU touches);
accounts and cohorts are scored at the next tick, score before learn. What waits for the
tick is bounded: at most ``max_pending`` (constructor, default ``MAX_PENDING``) events per
tick are held; past that (event time frozen, a flood within one tick) newer ones are not
scored, only counted in ``pending_dropped`` (their state updates are still made). An account
anomaly carries the event time of the position or account event that tripped it.

Severity of an account anomaly: warning; critical when the new leverage reaches
``critical_leverage``, the account's notional ``critical_notional``, the margin ratio 0.95,
or its equity is exhausted.

>>> from monitor.events import Position
>>> from monitor.state import MarketState
>>> st, d = MarketState(), LeverageJump()
>>> T = 1_732_400_000_000
>>> for ts, lev, size in ((T, 3.0, 10.0), (T + 60_000, 3.0, 12.0), (T + 61_000, 25.0, 100.0)):
...     ev = Position(account="a", symbol="X", ts=ts, size=size, entry_price=10_000.0, leverage=lev)
...     _ = st.apply(ev); d.on_event(ev, st)
>>> [(a.account, a.detail["reasons"]) for a in d.on_tick(T + 61_250, st)]
[('a', ['leverage', 'notional'])]
"""

from __future__ import annotations

import msgspec

from detectors.base import Detector, DetectorConfig
from detectors.baseline import Baseline, Cooldown
from detectors.rows import AccountRows
from monitor.events import SEVERITY_RANK, Account, Anomaly, Position
from monitor.state import MarketState

# per-account row fields
FIRST, N, LEV, HI, NOTIONAL, BASE_NOTIONAL, BASE_TS, MR, MR_TS, TOTAL, EFF, EFF_N = range(12)
FIELDS = ("first", "n", "lev", "hi", "notional", "base_notional", "base_ts", "mr", "mr_ts", "total", "eff", "eff_n")
# per (account, symbol) row fields
P_N, P_LEV = range(2)
POS_FIELDS = ("n", "lev")
# ticks an account's effective leverage must have been seen at before it counts as its usual
# (one observation says little: a calm account's book ranges over ~3x of its equity)
MIN_EFF_OBSERVATIONS = 2
NOTIONAL_EPS = 1e-3  # a running notional sum below this is float residue of a flat account, i.e. zero
MAX_PENDING = 200_000  # events held for the next tick (a 250 ms tick at 800k position events/s)
MR_SCORE_CAP = 10.0  # the score (and reported margin ratio) of an account with no equity left under open positions
MAX_RAISERS = 10_000  # raisers kept per symbol window (oldest dropped past it: the count saturates)
MAX_MEMBERS = 10_000  # accounts listed per symbol episode (counted past it, not listed)
TOP_ACCOUNTS = 10  # accounts named in a symbol-level anomaly's detail
WARNING, CRITICAL = SEVERITY_RANK["warning"], SEVERITY_RANK["critical"]
SEVERITY = {WARNING: "warning", CRITICAL: "critical"}


class LeverageJumpConfig(DetectorConfig, kw_only=True):
    lev_ratio: float = 3.0  # new leverage vs the account's usual on the symbol (and effective leverage vs usual)
    min_leverage: float = 15.0  # ...and at least this
    notional_ratio: float = 8.0  # total notional vs window_ms ago
    min_notional: float = 50_000.0  # USD floor of every account rule
    window_ms: int = 60_000
    margin_ratio_warn: float = 0.8  # maintenance margin / equity
    margin_ratio_rise: float = 0.3  # ...having risen by this within window_ms
    critical_leverage: float = 50.0
    critical_notional: float = 5_000_000.0
    fading: float = 0.3  # EW weight of the newest leverage in an account's history
    min_history: int = 1  # position changes with a size an account needs before it can jump
    account_warmup_ms: int = 60_000  # event time an account must have been seen before its rules fire
    min_effective_leverage: float = 15.0  # risk level (notional / equity) a notional or effective jump must reach
    max_accounts: int = 2_000_000  # per-account state bound; least recently updated evicted
    max_positions: int = 4_000_000  # per (account, symbol) state bound; least recently changed evicted
    cohort_window_ms: int = 300_000
    cohort_min: int = 10  # accounts raising leverage on one symbol within the window
    cohort_min_notional: float = 1_000_000.0  # ...with at least this much USD of positions raised
    cohort_z: float = 4.0  # severity: critical needs the count this far above the symbol's usual
    cohort_raise: float = 1.5  # a raise: new leverage >= this x the previous one on the symbol
    cohort_baseline_ms: int = 1_800_000  # time constant of the symbol's baseline of that count
    tick_ms: int = 250  # must match [daemon] tick (warm-up is warmup_ticks x tick_ms of event time)
    warmup_ticks: int = 240  # event time on a symbol before a cohort anomaly there
    cooldown_ms: int = 60_000  # an account re-fires within this only if its score doubles
    episode_ms: int = 120_000  # a symbol episode ends after this long with no new trip or raise there
    fold_min: int = 2  # accounts tripping on one symbol within episode_ms that are one symbol-level anomaly

    def __post_init__(self) -> None:
        if self.fold_min < 2:
            raise ValueError("fold_min must be >= 2 (one account acting alone keeps its own anomaly)")
        if self.cohort_min < 1:
            raise ValueError("cohort_min must be >= 1")
        if self.tick_ms <= 0 or self.cohort_baseline_ms < self.tick_ms:
            raise ValueError("need 0 < tick_ms <= cohort_baseline_ms")
        if min(self.window_ms, self.cohort_window_ms, self.episode_ms) <= 0:
            raise ValueError("window_ms, cohort_window_ms and episode_ms must be > 0")
        if self.max_accounts < 1 or self.max_positions < 1:
            raise ValueError("max_accounts and max_positions must be >= 1")


class _Sym:
    __slots__ = ("raisers", "raised", "oi_w", "oi_wl", "base", "lev_base", "first",
                 "ep_last", "ep_rank", "members", "ep_count", "solo", "fresh",
                 "tripped")

    def __init__(self, cfg: LeverageJumpConfig) -> None:
        # account -> (time, notional, from, to) of its latest raise within the cohort window,
        # oldest first (a re-raise moves to the end)
        self.raisers: dict[str, tuple[int, float, float, float]] = {}
        self.raised = 0.0  # notional of the raisers' positions (running sum over ``raisers``)
        self.oi_w = 0.0  # sum of |notional|
        self.oi_wl = 0.0  # sum of |notional| * leverage
        fading = cfg.tick_ms / cfg.cohort_baseline_ms  # one observation a tick: time constant in event time
        self.base = Baseline(fading, cfg.warmup_ticks, std_floor=1.0)
        self.lev_base = Baseline(fading, cfg.warmup_ticks, std_floor=0.5)
        self.first = 0
        self.ep_last = 0  # last event time something happened in the open episode (0: none)
        self.ep_rank = 0  # highest severity fired in it
        self.members: dict[str, float] = {}  # accounts folded into it -> their notional
        self.ep_count = 0  # accounts folded into it (also past MAX_MEMBERS)
        self.solo: list[tuple[int, str, float]] = []  # recent lone trips here: (time, account, notional)
        self.fresh = False  # a raise since the last tick
        self.tripped: dict[str, int] = {}  # accounts folded in for tripping an account rule -> when

    def __setstate__(self, s) -> None:
        slots = s[1] if isinstance(s, tuple) else s
        if "raisers" not in slots or not isinstance(slots["raisers"], dict):
            self.first = -1  # a checkpoint from before per-(account, symbol) history: see LeverageJump.__setstate__
            return
        for k, v in slots.items():
            setattr(self, k, v)

    def open(self, ts: int, cfg: LeverageJumpConfig) -> bool:
        """Whether an episode is open at ``ts``; one that has gone quiet is closed here."""
        if self.ep_last and ts - self.ep_last >= cfg.episode_ms:
            self.ep_last, self.ep_rank, self.members, self.ep_count, self.tripped = 0, 0, {}, 0, {}
        return self.ep_last != 0

    def add_member(self, acct: str, notional: float, tripped: int = 0) -> None:
        """Fold an account in (``tripped``: when it tripped an account rule, 0 for a raiser)."""
        if tripped and (acct in self.tripped or len(self.tripped) < MAX_MEMBERS):
            self.tripped[acct] = tripped
        if acct in self.members:
            self.members[acct] = max(self.members[acct], notional)
            return
        self.ep_count += 1
        if len(self.members) < MAX_MEMBERS:
            self.members[acct] = notional


class LeverageJump(Detector):
    name = "leverage_jump"
    Config = LeverageJumpConfig
    consumes = (Position, Account)
    max_pending = MAX_PENDING  # class defaults: checkpoints from before the bound still resume
    pending_dropped = 0
    check_params = [{}, {"account_warmup_ms": 1_000, "warmup_ticks": 8, "cohort_min": 3, "episode_ms": 2_000},
                    {"max_accounts": 16, "max_positions": 24, "warmup_ticks": 8, "cohort_min": 3,
                         "cooldown_ms": 1_000, "account_warmup_ms": 1_000, "episode_ms": 2_000},
                    {"max_accounts": 4, "max_positions": 4, "min_history": 0, "lev_ratio": 1.5, "min_leverage": 2.0,
                     "fading": 0.9, "cohort_window_ms": 5_000, "warmup_ticks": 2, "account_warmup_ms": 0,
                     "min_notional": 0.0, "cohort_min_notional": 0.0, "fold_min": 3}]

    def __init__(self, config: LeverageJumpConfig | None = None, max_pending: int = MAX_PENDING) -> None:
        super().__init__(config)
        self.max_pending = max_pending
        self.pending_dropped = 0  # events past max_pending within one tick: recorded, not scored
        self.accounts = AccountRows(FIELDS, self.config.max_accounts)
        self.positions = AccountRows(POS_FIELDS, self.config.max_positions)  # keyed by (account, symbol)
        self._syms: dict[str, _Sym] = {}
        # per account: as many keys as accounts kept, the least recently fired forgotten
        self._cool = Cooldown(self.config.cooldown_ms, 2.0, max_keys=self.config.max_accounts)
        self._pending: list[tuple] = []  # events since the last tick, in order

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        if "positions" in d:
            return
        # a checkpoint from before per-(account, symbol) history: its per-account rows mean
        # something else, so this detector starts over (accounts warm up again)
        cfg = msgspec.convert({f: getattr(self.config, f) for f in self.config.__struct_fields__
                               if f in LeverageJumpConfig.__struct_fields__}, LeverageJumpConfig)
        self.__init__(cfg, d.get("max_pending", MAX_PENDING))

    @property
    def evicted(self) -> int:
        return self.accounts.evicted

    def bounds(self) -> dict[str, tuple[int, int]]:
        return {"accounts": (len(self.accounts), self.accounts.cap),
                "positions": (len(self.positions), self.positions.cap),
                "cooldown": (len(self._cool), self._cool.max_keys),
                "pending": (len(self._pending), self.max_pending)}

    def symbol_maps(self) -> dict[str, int]:
        return {"symbols": len(self._syms)}

    # -- events: O(1), recording only ----------------------------------------------------
    def on_event(self, ev, state: MarketState) -> None:
        acct = str(ev.account)
        rows = self.accounts
        cols = rows.cols
        i = rows.get(acct)
        if i is None:  # a new row keys by the book's string for the id, shared rather than copied
            acct = state.accounts.name(acct) or acct
            i = rows.touch(acct)
            cols[FIRST][i] = ev.ts
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
        symbol = state.symbol_names.get(ev.symbol, ev.symbol)
        sym = self._syms.get(symbol)
        if sym is None:
            sym = self._syms[symbol] = _Sym(self.config)
        prev = state.last_prev_position
        if prev is not None:  # OI-weighted leverage of the symbol, kept incrementally
            w = prev.notional()
            sym.oi_w -= w
            sym.oi_wl -= w * prev.leverage
        notional = abs(ev.size) * ev.entry_price
        if ev.size:
            sym.oi_w += notional
            sym.oi_wl += notional * ev.leverage
        # the account's total notional after this event, kept as a running sum (O(1));
        # a fresh row (new or evicted account) starts from the state's positions once
        if cols[N][i] == 0 and cols[TOTAL][i] == 0.0:
            total = state.accounts.total_notional(acct)
        else:
            total = cols[TOTAL][i] + notional - (prev.notional() if prev else 0.0)
            if total < NOTIONAL_EPS:
                total = 0.0
        cols[TOTAL][i] = total
        if prev is not None and prev.size == ev.size and prev.leverage == ev.leverage:
            return  # re-published unchanged: not a change (nothing to learn, nothing to score)
        self.positions.touch((rows.lru.keys[i], symbol))
        if full:
            self.pending_dropped += 1
            return
        self._pending.append((rows.lru.keys[i], symbol, ev.leverage, prev.leverage if prev is not None else None,
                              ev.ts, ev.size, ev.margin_mode, total, notional))

    # -- ticks -----------------------------------------------------------------------------
    def on_tick(self, now: int, state: MarketState) -> list[Anomaly]:
        out: list[Anomaly] = []
        if self._pending:
            pending, self._pending = self._pending, []
            # an account's usual effective leverage learns its state at the end of the tick:
            # positions arriving together (a first appearance) are one observation
            last = {item[0]: k for k, item in enumerate(pending) if item[1] is not None}
            trips: dict[str, dict] = {}  # account -> its trip this tick (several rules, symbols: one)
            for k, item in enumerate(pending):
                if item[1] is None:
                    self._margin(item, state, trips)
                else:
                    self._position(item, state, trips, last[item[0]] == k)
            for trip in trips.values():
                self._route(trip, state, out)
        self._cohorts(now, state, out)
        return out

    def _cohorts(self, now: int, state: MarketState, out: list[Anomaly]) -> None:
        cfg = self.config
        horizon = now - cfg.cohort_window_ms
        warmup = cfg.warmup_ticks * cfg.tick_ms
        for symbol, s in self._syms.items():
            if not s.first:
                s.first = now
            raisers = s.raisers
            while raisers:
                acct = next(iter(raisers))
                r = raisers[acct]
                if r[0] > horizon:
                    break
                del raisers[acct]
                s.raised -= r[1]
            if not raisers:
                s.raised = 0.0  # no float residue once the window is empty
            count = len(raisers)
            open_ = s.open(now, cfg)
            oi_lev = s.oi_wl / s.oi_w if s.oi_w > 1e-9 else 0.0
            z, z_lev = s.base.z(float(count)), s.lev_base.z(oi_lev)
            if not open_:  # the baselines pause while an episode is open on the symbol
                s.base.learn(float(count))
                s.lev_base.learn(oi_lev)
            fresh, s.fresh = s.fresh, False
            # the level, on a tick a raise arrived in (a window still full of old raises is no news)
            if not fresh or now - s.first < warmup or count < cfg.cohort_min or s.raised < cfg.cohort_min_notional:
                continue
            big = count >= 3 * cfg.cohort_min and (not s.base.ready or z >= cfg.cohort_z)
            rank = CRITICAL if big else WARNING
            for acct, (_, notional, _, _) in raisers.items():
                s.add_member(acct, notional)
            fire = not open_ or rank > s.ep_rank
            s.ep_last = now
            s.ep_rank = max(s.ep_rank, rank)
            if not fire:
                continue
            raised = [{"account": a, "from": f, "to": t, "notional": round(n, 2)}
                      for a, (_, n, f, t) in sorted(raisers.items(), key=lambda kv: -kv[1][1])[:TOP_ACCOUNTS]]
            out.append(self._symbol_anomaly(symbol, s, now, rank, state, "cohort", {
                "accounts_raising": count, "raised_notional": round(s.raised, 2), "window_ms": cfg.cohort_window_ms,
                "z": round(z, 3), "baseline": s.base.snapshot(), "top_raisers": raised,
                "oi_weighted_leverage": round(oi_lev, 3), "oi_weighted_leverage_z": round(z_lev, 3),
                "oi_weighted_leverage_baseline": s.lev_base.snapshot(),
                "crossed": "accounts raising leverage on this symbol: count and notional at their floors"}))

    def _symbol_anomaly(self, symbol: str, s: _Sym, ts: int, rank: int, state: MarketState, scope: str,
                        extra: dict) -> Anomaly:
        cfg = self.config
        marks = state.marks.get(symbol)
        top = sorted(s.members.items(), key=lambda kv: -kv[1])[:TOP_ACCOUNTS]
        detail = {"scope": scope, "accounts": s.ep_count,
                  "top_accounts": [{"account": a, "notional": round(n, 2)} for a, n in top],
                  "episode_ms": cfg.episode_ms, "open_notional": round(s.oi_w, 2),
                  "venue_open_interest": marks.open_interest if marks is not None else None,
                  "thresholds": {"cohort_min": cfg.cohort_min, "cohort_min_notional": cfg.cohort_min_notional,
                                 "cohort_z": cfg.cohort_z, "cohort_raise": cfg.cohort_raise,
                                 "min_leverage": cfg.min_leverage, "fold_min": cfg.fold_min}}
        detail.update(extra)
        score = max(s.ep_count, extra.get("accounts_raising", 0))
        return Anomaly.make("leverage_jump", ts, score, SEVERITY[rank], symbol=symbol, detail=detail)

    def _route(self, trip: dict, state: MarketState, out: list[Anomaly]) -> None:
        """One account's trip: folded into an open episode it belongs to, or the start of one
        (``fold_min`` accounts on the symbol), or the account's own anomaly."""
        cfg = self.config
        acct, symbol, ts, notional = trip["account"], trip["symbol"], trip["ts"], trip["notional"]
        rank = SEVERITY_RANK[trip["severity"]]
        s = self._syms[symbol]
        home = symbol if s.open(ts, cfg) else None
        if home is None:  # an account it folded in, tripping again elsewhere: the same story
            for other in trip["symbols"]:
                o = self._syms.get(other)
                if o is not None and o.tripped.get(acct, 0) >= ts - cfg.window_ms and o.open(ts, cfg):
                    home = other
                    break
        if home is not None:
            e = self._syms[home]
            e.add_member(acct, notional, ts)
            e.ep_last = max(e.ep_last, ts)
            if e.ep_count >= 3 * cfg.cohort_min:
                rank = CRITICAL
            if rank > e.ep_rank:
                e.ep_rank = rank
                out.append(self._symbol_anomaly(home, e, ts, rank, state, "accounts", {
                    "trigger": self._brief(trip),
                    "crossed": "many accounts tripping leverage rules on this symbol in one episode"}))
            return
        s.solo = [x for x in s.solo if ts - x[0] < cfg.episode_ms and x[1] != acct]
        if len(s.solo) + 1 >= cfg.fold_min:  # a crowd: one symbol-level anomaly from now on
            for t, a, n in s.solo:
                s.add_member(a, n, t)
            s.add_member(acct, notional, ts)
            s.solo = []
            s.ep_last, s.ep_rank = ts, max(rank, CRITICAL if s.ep_count >= 3 * cfg.cohort_min else WARNING)
            out.append(self._symbol_anomaly(symbol, s, ts, s.ep_rank, state, "accounts", {
                "trigger": self._brief(trip),
                "crossed": "several accounts tripping leverage rules on this symbol within episode_ms"}))
            return
        s.solo.append((ts, acct, notional))
        if self._cool.allow(acct, ts, trip["score"]):
            out.append(Anomaly.make("leverage_jump", ts, trip["score"], trip["severity"], symbol=symbol,
                                    account=acct, detail=trip["detail"]))

    @staticmethod
    def _brief(trip: dict) -> dict:
        return {"account": trip["account"], "reasons": trip["detail"]["reasons"], "score": round(trip["score"], 3),
                "notional": round(trip["notional"], 2)}

    @staticmethod
    def _trip(trips: dict, acct: str, symbol: str, ts: int, score: float, severity: str, notional: float,
              weight: float, detail: dict) -> None:
        """Record an account's trip (``weight``: the notional of the position it is about); several
        in one tick are one: named on the largest position, scored by the strongest rule, all
        symbols listed."""
        t = trips.get(acct)
        if t is None:
            detail["symbols"] = [symbol]
            trips[acct] = {"account": acct, "symbol": symbol, "ts": ts, "score": score, "severity": severity,
                           "notional": notional, "weight": weight, "detail": detail, "symbols": detail["symbols"]}
            return
        symbols = t["symbols"] + ([symbol] if symbol not in t["symbols"] else [])
        reasons = t["detail"]["reasons"] + [r for r in detail["reasons"] if r not in t["detail"]["reasons"]]
        if weight > t["weight"]:  # named on its largest position among them: the story's symbol
            t.update(symbol=symbol, detail=detail, weight=weight)  # (stamped when it began: ts kept)
        t["score"] = max(t["score"], score)
        if SEVERITY_RANK[severity] > SEVERITY_RANK[t["severity"]]:
            t["severity"] = severity
        t["notional"] = max(t["notional"], notional)
        t["symbols"] = t["detail"]["symbols"] = symbols
        t["detail"]["reasons"] = reasons

    def _position(self, item: tuple, state: MarketState, trips: dict, final: bool = True) -> None:
        cfg = self.config
        acct, symbol, lev, prev_lev, ts, size, margin_mode, total, pos_notional = item
        i = self.accounts.get(acct)  # touched at the event; None if evicted since (within this tick)
        if i is None:
            return
        cols = self.accounts.cols
        n, usual, hi, notional_col, base_n, base_ts = cols[N], cols[LEV], cols[HI], cols[NOTIONAL], \
            cols[BASE_NOTIONAL], cols[BASE_TS]
        usual_eff, eff_n = cols[EFF], cols[EFF_N]
        j = self.positions.get((acct, symbol))
        pcols = self.positions.cols
        sym_n = pcols[P_N][j] if j is not None else 0.0
        # the account's usual leverage here; on a symbol new to it, the highest it has used anywhere
        ref = pcols[P_LEV][j] if sym_n else (hi[i] if n[i] else None)
        warm = ts - cols[FIRST][i] >= cfg.account_warmup_ms and n[i] >= cfg.min_history
        st = state.accounts.get(acct)
        effective = total / st.equity if st is not None and st.equity and st.equity > 0 else None
        if warm and size and ref is not None:
            # a raise on this symbol: vs the position it replaces, else the reference above
            r = prev_lev if prev_lev is not None else ref
            if lev >= cfg.min_leverage and lev >= cfg.cohort_raise * max(r, 1.0):
                s = self._syms[symbol]
                old = s.raisers.pop(acct, None)
                if old is not None:
                    s.raised -= old[1]
                elif len(s.raisers) >= MAX_RAISERS:
                    oldest = next(iter(s.raisers))
                    s.raised -= s.raisers.pop(oldest)[1]
                s.raisers[acct] = (ts, pos_notional, r, lev)
                s.raised += pos_notional
                s.fresh = True
        if warm and size and total >= cfg.min_notional:
            level = effective is None or effective >= cfg.min_effective_leverage
            reasons = []
            if ref is not None and lev >= cfg.min_leverage and lev >= cfg.lev_ratio * max(ref, 1.0) \
                    and pos_notional >= cfg.min_notional:
                reasons.append("leverage")
            in_window = ts - base_ts[i] <= cfg.window_ms
            base = base_n[i] if in_window else notional_col[i]
            eff_known = effective is not None and eff_n[i] >= MIN_EFF_OBSERVATIONS and usual_eff[i] > 0
            eff_jump = eff_known and effective >= cfg.lev_ratio * usual_eff[i]
            if base > 0 and total >= cfg.notional_ratio * base and (eff_jump or not eff_known):
                reasons.append("notional")
            if eff_jump or (base <= 0 and effective is not None and not eff_known):
                reasons.append("effective_leverage")  # (from flat: nothing held a window ago is a jump too)
            # what fires: the notional rule; the leverage rule on a symbol the account has a
            # history on; the effective-leverage rule from flat (no notional to compare with).
            # A high leverage on a symbol new to the account, or a higher effective leverage
            # alone, is how calm accounts with per-symbol settings open their usual positions:
            # only supporting reasons
            if not (("notional" in reasons and level) or ("leverage" in reasons and sym_n)
                    or ("effective_leverage" in reasons and base <= 0 and level)):
                reasons = []
            if reasons:
                score = max(lev / max(ref, 1.0) if "leverage" in reasons else 0.0,
                            total / base if "notional" in reasons else 0.0,
                            effective / (usual_eff[i] or 1.0) if "effective_leverage" in reasons else 0.0)
                critical = lev >= cfg.critical_leverage or total >= cfg.critical_notional
                self._trip(trips, acct, symbol, ts, score, "critical" if critical else "warning", total,
                           pos_notional, {
                    "scope": "account", "reasons": reasons, "leverage": lev,
                    "effective_leverage": round(effective, 3) if effective is not None else None,
                    "usual_leverage": round(ref, 3) if ref is not None else None,
                    "usual_leverage_on": "symbol" if sym_n else "account",
                    "usual_effective_leverage": round(usual_eff[i], 3) if usual_eff[i] else None,
                    "position_notional": round(pos_notional, 2), "notional": round(total, 2),
                    "notional_before": round(base, 2), "window_ms": cfg.window_ms,
                    "margin_mode": margin_mode, "history": int(n[i]),
                    "thresholds": {"lev_ratio": cfg.lev_ratio, "min_leverage": cfg.min_leverage,
                                   "notional_ratio": cfg.notional_ratio, "min_notional": cfg.min_notional,
                                   "min_effective_leverage": cfg.min_effective_leverage},
                    "crossed": " and ".join(
                        {"leverage": "leverage far above the account's usual on this symbol",
                         "notional": "notional far above what it held a window ago",
                         "effective_leverage": "notional / equity far above the account's usual"}[r]
                        for r in reasons)})
        # learn: the account's usual leverage on this symbol and its highest anywhere (from
        # positions with a size: the history the rules need), its notional as of window_ms ago
        if size:
            usual[i] = lev if n[i] == 0 else (1 - cfg.fading) * usual[i] + cfg.fading * lev
            hi[i] = max(hi[i], lev)
            n[i] += 1
            if j is not None:
                pcols[P_LEV][j] = lev if not sym_n else (1 - cfg.fading) * pcols[P_LEV][j] + cfg.fading * lev
                pcols[P_N][j] = sym_n + 1
            if effective is not None and final:
                usual_eff[i] = effective if not usual_eff[i] \
                    else (1 - cfg.fading) * usual_eff[i] + cfg.fading * effective
                eff_n[i] += 1
        if ts - base_ts[i] > cfg.window_ms:
            base_n[i], base_ts[i] = notional_col[i], ts
        notional_col[i] = total

    def _margin(self, item: tuple, state: MarketState, trips: dict) -> None:
        cfg = self.config
        acct, _, equity, mm, ts = item
        i = self.accounts.get(acct)
        if i is None:
            return  # evicted since the event (more than max_accounts accounts within one tick)
        cols = self.accounts.cols
        st = state.accounts.get(acct)
        positions = st.positions if st is not None else {}
        held = sorted(((p.notional(), sym) for sym, p in positions.items()), reverse=True)
        total = sum(n for n, _ in held)
        prev, prev_ts = cols[MR][i], cols[MR_TS][i]
        if equity <= 0:
            if not held or mm <= 0:  # liquidated or flat: nothing left at risk, nothing to report
                cols[MR][i], cols[MR_TS][i] = 0.0, 0.0
                return
            mr, exhausted = MR_SCORE_CAP, True
        else:
            mr, exhausted = min(mm / equity, MR_SCORE_CAP), False
        warm = ts - cols[FIRST][i] >= cfg.account_warmup_ms
        rose = prev_ts and ts - prev_ts <= cfg.window_ms and mr - prev >= cfg.margin_ratio_rise \
            and mr >= cfg.margin_ratio_warn
        if warm and held and total >= cfg.min_notional and (exhausted or rose):
            # named where the margin moved: the position changed last, if within window_ms
            # (a cross account opening into a cluster), else the largest (prices moving)
            sym, p = max(positions.items(), key=lambda kv: kv[1].ts)
            named = sym if ts - p.ts <= cfg.window_ms else held[0][1]
            self._trip(trips, acct, named, ts, mr, "critical" if mr >= 0.95 else "warning", total,
                       positions[named].notional(), {
                "scope": "account", "reasons": ["equity_exhausted" if exhausted else "margin_ratio"],
                "margin_ratio": None if exhausted else round(mr, 4),
                "positions": [{"symbol": sym, "notional": round(n, 2)} for n, sym in held[:5]],
                "notional": round(total, 2), "margin_ratio_before": round(prev, 4) if prev_ts else None,
                "equity": equity, "maintenance_margin": mm, "window_ms": cfg.window_ms,
                "thresholds": {"margin_ratio_warn": cfg.margin_ratio_warn,
                               "margin_ratio_rise": cfg.margin_ratio_rise, "min_notional": cfg.min_notional},
                "crossed": "no equity left under open positions" if exhausted
                else "maintenance margin eating the account's equity fast"})
        if ts - prev_ts > cfg.window_ms or mr < prev:
            cols[MR][i], cols[MR_TS][i] = mr, ts
