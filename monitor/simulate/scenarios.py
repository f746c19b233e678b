"""Labelled stress scenarios on top of the calm market.

A scenario is a set of actors (callables run by ``Market.step``) plus ground-truth
labels: kind, symbol, account (or None), start and end in event time, and for a cascade
the time of the first forced liquidation. ``build(name, seed, seconds)`` returns a
ready ``Market`` and its labels; everything is seeded, so the same seed gives the same
stream and the same labels.

>>> m, labels = build("cancel_burst", seed=1, seconds=300, start_ts=1_732_400_000_000)
>>> [(l.kind, l.symbol) for l in labels]
[('cancel_burst', 'ETH-PERP')]
"""

from __future__ import annotations

import math
import random
from typing import Callable

import msgspec

from monitor.simulate.market import MMR, Market, SymbolState, poisson

SCENARIOS = ("calm", "cancel_burst", "leverage_jump", "thin_book_cluster", "cascade", "benign_surge", "mixed",
             "profile")
BENIGN = ("benign_surge", "calm_burst")  # labelled, but must raise nothing: calm market


class Label(msgspec.Struct, kw_only=True):
    """Ground truth of one stress on one symbol (a cascade has one per symbol, same ``episode``).

    ``formation_ts``: when the liquidation cluster began to form (thin_book_cluster and
    cascade); ``formed_ts``: when it was complete; ``first_liquidation_ts``: the cascade's
    first forced liquidation; ``symbols``: every symbol of the episode; ``accounts``: how
    many accounts act in it (a cohort, a cluster)."""

    kind: str
    symbol: str | None
    account: str | None = None
    start_ts: int
    end_ts: int
    first_liquidation_ts: int | None = None
    scenario: str = ""
    formation_ts: int | None = None
    formed_ts: int | None = None
    symbols: list[str] = []
    episode: int | None = None
    accounts: int | None = None
    detail: dict = {}


class _Window:
    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end

    def active(self, m: Market) -> bool:
        return self.start <= m.ts < self.end


class CancelBurst(_Window):
    """One account places and cancels at ``intensity`` x the normal rate near the touch,
    while the liquidity resting there is pulled."""

    def __init__(self, symbol: str, account: str, start: int, end: int, intensity: float = 15.0) -> None:
        super().__init__(start, end)
        self.symbol, self.account, self.intensity = symbol, account, intensity
        self.pulled = False

    def __call__(self, m: Market, out: list[dict]) -> None:
        if not self.active(m):
            return
        s = m.by_name[self.symbol]
        dt = m.step_ms / 1000
        n = poisson(m.rng, m.maker_rate * dt * self.intensity)
        for _ in range(n):
            side = "buy" if m.rng.random() < 0.5 else "sell"
            book = s.bids if side == "buy" else s.asks
            if not book:
                continue
            px = max(book) if side == "buy" else min(book)
            size = round(s.spec.level_notional / s.spec.price * m.rng.uniform(0.3, 1.0), 6)
            oid = m.next_order_id
            m.next_order_id += 1
            for action in ("new", "cancel"):
                out.append({"type": "order", "symbol": self.symbol, "ts": m.ts, "order_id": oid,
                            "account": self.account, "action": action, "side": side, "price": px, "size": size})
        if not self.pulled:  # pull half of the top three levels a side, once
            self.pulled = True
            bids = {p: round(s.bids[p] * 0.5, 6) for p in sorted(s.bids, reverse=True)[:3]}
            asks = {p: round(s.asks[p] * 0.5, 6) for p in sorted(s.asks)[:3]}
            for changes, book, side in ((bids, s.bids, "buy"), (asks, s.asks, "sell")):
                for p, q in changes.items():
                    oid = m.next_order_id
                    m.next_order_id += 1
                    out.append({"type": "order", "symbol": self.symbol, "ts": m.ts, "order_id": oid,
                                "account": self.account, "action": "cancel", "side": side, "price": p,
                                "size": round(book[p] - q, 6)})
            m.emit_book(s, bids, asks, out)


class BenignSurge(_Window):
    """Trades, new orders and cancels all rise ``x`` times together (must not alert)."""

    def __init__(self, start: int, end: int, x: float = 3.0) -> None:
        super().__init__(start, end)
        self.x = x
        self.base: tuple[float, float] | None = None

    def __call__(self, m: Market, out: list[dict]) -> None:
        if self.active(m) and self.base is None:
            self.base = (m.maker_rate, m.taker_rate)
            m.maker_rate, m.taker_rate = m.maker_rate * self.x, m.taker_rate * self.x
        elif not self.active(m) and self.base is not None and m.ts >= self.end:
            m.maker_rate, m.taker_rate = self.base
            self.base = None


HOLD_MS = 90_000  # a levered-up account de-levers (back to what it held) this long after its raise


def _restore(m: Market, name: str, symbol: str, before: tuple[float, float, float] | None, out: list[dict]) -> None:
    """The account goes back to the position it held on ``symbol`` before the episode."""
    a = next(a for a in m.accounts if a.name == name)
    s = m.by_name[symbol]
    if before is None:
        old = a.positions.pop(symbol, None)
        out.append({"type": "position", "account": name, "symbol": symbol, "ts": m.ts, "size": 0.0,
                    "entry_price": old[1] if old else round(s.mid, 10), "leverage": a.leverage,
                    "margin_mode": "isolated" if a.isolated else "cross"})
    else:
        a.positions[symbol] = before
        ev = _position(m, name, s, before[0], before[2], a.isolated)
        ev["entry_price"] = before[1]
        out.append(ev)
    out.append(m._account_event(a))


class LeverageJump(_Window):
    """One account goes from low leverage to ``leverage`` with ``x`` times the notional,
    and goes back to what it held ``HOLD_MS`` later (an episode, not a new normal)."""

    def __init__(self, symbol: str, account: str, at: int, leverage: float = 25.0, x: float = 8.0) -> None:
        super().__init__(at, at + 1)
        self.symbol, self.account, self.leverage, self.x = symbol, account, leverage, x
        self.done = False
        self.before: tuple[float, float, float] | None = None
        self.restored = False

    def __call__(self, m: Market, out: list[dict]) -> None:
        if self.restored or m.ts < self.start:
            return
        if self.done:
            if m.ts >= self.start + HOLD_MS:
                self.restored = True
                _restore(m, self.account, self.symbol, self.before, out)
            return
        self.done = True
        a = next(a for a in m.accounts if a.name == self.account)
        s = m.by_name[self.symbol]
        self.before = a.positions.get(self.symbol)
        base = sum(abs(sz) * m.by_name[sym].mid for sym, (sz, _, _) in a.positions.items()) or a.equity * 3
        size = round(base * self.x / s.mid, 6)
        a.positions[self.symbol] = (size, s.mid, self.leverage)
        out.append(_position(m, a.name, s, size, self.leverage, a.isolated))
        out.append(m._account_event(a))


class LeverageCohort(_Window):
    """``n`` accounts raise leverage on one symbol within the window (crowding); each goes
    back to what it held there ``HOLD_MS`` after its raise."""

    def __init__(self, symbol: str, accounts: list[str], start: int, end: int) -> None:
        super().__init__(start, end)
        self.symbol = symbol
        step = (end - start) / max(1, len(accounts))
        self.schedule = [(int(start + i * step), a) for i, a in enumerate(accounts)]
        self.unwind: list[tuple[int, str, tuple[float, float, float] | None]] = []

    def __call__(self, m: Market, out: list[dict]) -> None:
        while self.schedule and self.schedule[0][0] <= m.ts:
            _, name = self.schedule.pop(0)
            a = next(a for a in m.accounts if a.name == name)
            s = m.by_name[self.symbol]
            self.unwind.append((m.ts + HOLD_MS, name, a.positions.get(self.symbol)))
            lev = float(m.rng.choice((20, 25, 30)))
            size = round(a.equity * lev * 0.6 / s.mid, 6)
            a.positions[self.symbol] = (size, s.mid, lev)
            out.append(_position(m, a.name, s, size, lev, a.isolated))
            out.append(m._account_event(a))
        while self.unwind and self.unwind[0][0] <= m.ts:
            _, name, before = self.unwind.pop(0)
            _restore(m, name, self.symbol, before, out)


class LiquidationCluster(_Window):
    """Accounts open longs whose liquidation prices converge into a band ``distance``
    below mark, and the bids there thin out. With ``push``, price is then driven into
    the band: positions are liquidated as mark crosses them (forced sells), and their
    accounts' cross positions on ``second`` are liquidated too (shared collateral).

    The stress is an episode, not a new regime: at ``end`` the book's liquidity comes
    back (the thinned levels and the thinning of new ones), the forced selling on
    ``second`` stops, and the cluster's accounts still open de-lever (close what the
    episode made them open) over the following ``UNWIND_MS``."""

    UNWIND_MS = 30_000

    def __init__(self, symbol: str, accounts: list[str], start: int, end: int, distance: float = 0.02,
                 push_at: int | None = None, second: str | None = None, labels: list[Label] = (),
                 formation_ms: int | None = None, depth_ratio: float | None = None, thin: float = 0.2) -> None:
        """``formation_ms``: the accounts open over this long (default: 30% of the time to
        the push or the end); ``depth_ratio``: the cluster's notional is this many times the
        thinned bid depth of its band (default: each account's equity x leverage x 0.8);
        ``thin``: the band's and new levels' sizes are multiplied by this once formed."""
        super().__init__(start, end)
        self.symbol, self.accounts, self.distance = symbol, accounts, distance
        self.push_at, self.second = push_at, second
        self.labels = list(labels)  # stamped with the first forced liquidation's time
        self.depth_ratio, self.thin = depth_ratio, thin
        self.per_account: float | None = None  # notional per account (depth_ratio), set at the start
        span = formation_ms if formation_ms is not None else (min(end, push_at or end) - start) * 0.3
        step = span / max(1, len(accounts))
        self.schedule = [(int(start + i * step), a) for i, a in enumerate(accounts)]
        self.open: dict[str, float] = {}  # account -> liquidation price
        self.first_liquidation_ts: int | None = None
        self.thinned = False
        self.restore: dict[float, float] = {}  # thinned bid levels -> their size before
        self.pushed_second = False
        self.released = False
        self.unwind: list[tuple[int, str]] = []  # (when, account) closing after the end

    def __call__(self, m: Market, out: list[dict]) -> None:
        if m.ts < self.start:
            return
        s = m.by_name[self.symbol]
        if self.depth_ratio is not None and self.per_account is None:
            lo, hi = s.mid * (1 - self.distance * 1.6), s.mid * (1 - self.distance * 0.4)
            band = sum(p * q for p, q in s.bids.items() if lo <= p <= hi) * self.thin
            self.per_account = self.depth_ratio * band / max(1, len(self.accounts))
        while self.schedule and self.schedule[0][0] <= m.ts:
            _, name = self.schedule.pop(0)
            a = next(a for a in m.accounts if a.name == name)
            d = self.distance * m.rng.uniform(0.9, 1.1)
            lev = round(1.0 / (d + MMR), 2)  # isolated long: liq = entry * (1 - 1/lev + mmr)
            if self.per_account is not None:
                notional = self.per_account * m.rng.uniform(0.5, 1.5)
                # its collateral is what this position needs at ``lev`` (plus the maintenance of
                # what else it holds), so its cross liquidation price is in the band too
                a.equity = round(notional / lev + sum(abs(sz) * m.by_name[sym].mid * MMR
                                                      for sym, (sz, _, _) in a.positions.items()
                                                      if sym != self.symbol), 2)
            else:
                notional = max(a.equity, 20_000.0) * lev * 0.8
            size = round(notional / s.mid, 6)
            a.positions[self.symbol] = (size, s.mid, lev)
            a.isolated = False
            out.append(_position(m, a.name, s, size, lev, False))
            out.append(m._account_event(a))
            self.open[name] = s.mid * (1 - 1 / lev + MMR)
            if self.second is not None:  # the same collateral also backs a long on the second symbol
                s2 = m.by_name[self.second]
                size2 = round(max(a.equity, 20_000.0) * 10 * 0.5 / s2.mid, 6)
                a.positions[self.second] = (size2, s2.mid, 10.0)
                out.append(_position(m, a.name, s2, size2, 10.0, False))
        if not self.thinned and not self.schedule:
            self.thinned = True
            s.thin = self.thin  # liquidity in the band and below it is thin until the end
            lo, hi = s.mid * (1 - self.distance * 1.6), s.mid * (1 - self.distance * 0.4)
            self.restore = {p: q for p, q in s.bids.items() if lo <= p <= hi}
            m.emit_book(s, {p: round(q * self.thin, 6) for p, q in self.restore.items()}, {}, out)
        if self.push_at is not None and self.push_at <= m.ts < self.end:
            s.drift_per_s = -self.distance * 1.6 / max(1.0, (self.end - self.push_at) / 1000)
            self._liquidate(m, s, out)
        elif m.ts >= self.end:
            if not self.released:
                self._release(m, s, out)
            self._unwind(m, out)

    def _release(self, m: Market, s: SymbolState, out: list[dict]) -> None:
        self.released = True
        s.thin = 1.0
        if self.push_at is not None:
            s.drift_per_s = 0.0
        if self.pushed_second:
            m.by_name[self.second].drift_per_s = 0.0
        back = {p: q for p, q in self.restore.items() if p in s.bids}
        if back:
            m.emit_book(s, back, {}, out)
        step = self.UNWIND_MS / max(1, len(self.open))
        self.unwind = [(int(m.ts + i * step), name) for i, name in enumerate(sorted(self.open))]
        self.open.clear()

    def _unwind(self, m: Market, out: list[dict]) -> None:
        while self.unwind and self.unwind[0][0] <= m.ts:
            _, name = self.unwind.pop(0)
            a = next(a for a in m.accounts if a.name == name)
            for sym in [self.symbol] + ([self.second] if self.second else []):
                pos = a.positions.pop(sym, None)
                if pos is not None:
                    out.append({"type": "position", "account": name, "symbol": sym, "ts": m.ts, "size": 0.0,
                                "entry_price": pos[1], "leverage": pos[2], "margin_mode": "cross"})
            out.append(m._account_event(a))

    def _liquidate(self, m: Market, s: SymbolState, out: list[dict]) -> None:
        for name, liq in list(self.open.items()):
            if s.mid > liq:
                continue
            del self.open[name]
            a = next(a for a in m.accounts if a.name == name)
            for sym in [self.symbol] + ([self.second] if self.second else []):
                pos = a.positions.pop(sym, None)
                if pos is None:
                    continue
                sym_state = m.by_name[sym]
                px = round(sym_state.mid, 10)
                out.append({"type": "liquidation", "symbol": sym, "ts": m.ts, "side": "sell", "price": px,
                            "size": abs(pos[0]), "account": name})
                out.append({"type": "trade", "symbol": sym, "ts": m.ts, "price": px, "size": abs(pos[0]),
                            "side": "sell", "liquidation": True})
                out.append({"type": "position", "account": name, "symbol": sym, "ts": m.ts, "size": 0.0,
                            "entry_price": pos[1], "leverage": pos[2], "margin_mode": "cross"})
                if sym != self.symbol:
                    sym_state.drift_per_s = min(sym_state.drift_per_s, -0.002)  # forced selling moves it
                    self.pushed_second = True
            if self.first_liquidation_ts is None:
                self.first_liquidation_ts = m.ts
                for label in self.labels:
                    label.first_liquidation_ts = m.ts


def _position(m: Market, account: str, s: SymbolState, size: float, lev: float, isolated: bool) -> dict:
    sign = 1 if size > 0 else -1
    return {"type": "position", "account": account, "symbol": s.spec.name, "ts": m.ts, "size": size,
            "entry_price": round(s.mid, 10), "leverage": lev, "margin_mode": "isolated" if isolated else "cross",
            "liq_price": round(max(s.mid * (1 - sign * (1 / lev - MMR)), 0.0), 10)}


# -- the library ---------------------------------------------------------------------
WARMUP_S = 120  # every scenario starts with calm market for the detectors' baselines


def build(name: str, seed: int = 7, seconds: float = 600, start_ts: int = 1_732_400_000_000,
          symbols: int = 6, accounts: int = 3000) -> tuple[Market, list[Label]]:
    """A market playing scenario ``name`` for ``seconds`` of event time, and its labels."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    if name == "profile":  # a randomized market drawn from the seed (symbols: the profile's own)
        return build_profile(Profile.draw(seed), seconds=seconds, start_ts=start_ts, accounts=accounts)
    m = Market(seed=seed, symbols=symbols, accounts=accounts, start_ts=start_ts,
               gap_every_s=0 if name != "mixed" else 600)
    rng = random.Random(seed * 7919 + SCENARIOS.index(name))
    labels: list[Label] = []
    t = lambda s: start_ts + int(s * 1000)  # noqa: E731
    pick = lambda: rng.choice(m.symbols).spec.name  # noqa: E731
    names = [a.name for a in m.accounts]
    rng.shuffle(names)
    used = iter(names)

    def add(kind: str, at_s: float, **kw) -> None:
        labels.extend(_place(m, kind, t, at_s, used, rng, pick, name, **kw))

    if name == "cancel_burst":
        add("cancel_burst", max(WARMUP_S + 30, seconds * 0.5), symbol="ETH-PERP" if symbols > 1 else None)
    elif name == "leverage_jump":
        add("leverage_jump", max(WARMUP_S + 30, seconds * 0.4))
        add("leverage_cohort", max(WARMUP_S + 60, seconds * 0.7))
    elif name == "thin_book_cluster":
        add("thin_book_cluster", max(WARMUP_S + 30, seconds * 0.4))
    elif name == "cascade":
        add("cascade", max(WARMUP_S + 30, seconds * 0.3))
    elif name == "benign_surge":
        add("benign_surge", max(WARMUP_S + 30, seconds * 0.5))
    elif name == "mixed":
        kinds = ["cancel_burst", "leverage_jump", "leverage_cohort", "thin_book_cluster", "cascade", "benign_surge"]
        rng.shuffle(kinds)  # every kind once, in a seeded order, before any repeats
        slot, at, i = 330.0, WARMUP_S + 60.0, 0
        while at + 60 <= seconds:
            kind = kinds[i % len(kinds)]
            add(kind, at + rng.uniform(0, 30))
            at += 420.0 if kind == "cascade" else slot
            i += 1
    return m, labels


def _place(m: Market, kind: str, t: Callable[[float], int], at_s: float, used, rng: random.Random, pick,
           scenario: str, symbol: str | None = None) -> list[Label]:
    symbol = symbol or pick()
    if kind == "cancel_burst":
        acct = f"spoof-{rng.randrange(1000):03d}"
        m.actors.append(CancelBurst(symbol, acct, t(at_s), t(at_s + 10)))
        return [Label(kind=kind, symbol=symbol, account=acct, start_ts=t(at_s), end_ts=t(at_s + 10),
                      scenario=scenario)]
    if kind == "benign_surge":
        m.actors.append(BenignSurge(t(at_s), t(at_s + 60)))
        return [Label(kind="benign_surge", symbol=None, start_ts=t(at_s), end_ts=t(at_s + 60), scenario=scenario)]
    if kind == "leverage_jump":
        acct = next(used)
        m.actors.append(LeverageJump(symbol, acct, t(at_s)))
        return [Label(kind=kind, symbol=symbol, account=acct, start_ts=t(at_s), end_ts=t(at_s + 5),
                      scenario=scenario)]
    if kind == "leverage_cohort":
        accts = [next(used) for _ in range(40)]
        m.actors.append(LeverageCohort(symbol, accts, t(at_s), t(at_s + 30)))
        return [Label(kind="leverage_cohort", symbol=symbol, start_ts=t(at_s), end_ts=t(at_s + 30),
                      scenario=scenario, accounts=len(accts))]
    if kind == "thin_book_cluster":
        accts = [next(used) for _ in range(150)]
        m.actors.append(LiquidationCluster(symbol, accts, t(at_s), t(at_s + 120)))
        return [Label(kind=kind, symbol=symbol, start_ts=t(at_s), end_ts=t(at_s + 120), scenario=scenario,
                      formation_ts=t(at_s), formed_ts=t(at_s + 36), symbols=[symbol], accounts=len(accts))]
    if kind == "cascade":
        second = next(s.spec.name for s in m.symbols if s.spec.name != symbol)
        accts = [next(used) for _ in range(200)]
        labels = [Label(kind="cascade", symbol=sym, start_ts=t(at_s), end_ts=t(at_s + 300), scenario=scenario,
                        formation_ts=t(at_s), formed_ts=t(at_s + 54), symbols=[symbol, second], episode=int(at_s),
                        accounts=len(accts)) for sym in (symbol, second)]
        m.actors.append(LiquidationCluster(symbol, accts, t(at_s), t(at_s + 300), push_at=t(at_s + 180),
                                           second=second, labels=labels))
        return labels
    raise ValueError(kind)


def play(m: Market, seconds: float):
    """The snapshots, then each step's events (cascade labels get their liquidation time)."""
    yield m.snapshots()
    yield from m.run(seconds)


# -- randomized market profiles ---------------------------------------------------------
class CalmBurst(_Window):
    """Calm, not stress: activity on one symbol (or all, ``symbol`` None) rises ``x`` times,
    or (``requote``) market makers re-quote at ``x`` times the maker rate: cancel-heavy flow
    with no trades. Labelled ``calm_burst``: it must raise nothing."""

    def __init__(self, symbol: str | None, start: int, end: int, x: float, requote: bool = False) -> None:
        super().__init__(start, end)
        self.symbol, self.x, self.requote = symbol, x, requote
        self.on = False

    def __call__(self, m: Market, out: list[dict]) -> None:
        if not self.on and self.active(m):
            self.on = True
            self._apply(m, 1)
        elif self.on and m.ts >= self.end:
            self.on = False
            self._apply(m, -1)

    def _apply(self, m: Market, sign: int) -> None:
        for s in m.symbols if self.symbol is None else [m.by_name[self.symbol]]:
            if self.requote:
                s.requote = max(0.0, s.requote + sign * self.x)
            else:
                s.activity = s.activity * self.x if sign > 0 else s.activity / self.x


class Profile(msgspec.Struct, kw_only=True):
    """One randomized market, all of it drawn from ``seed`` (``Profile.draw(seed)``).

    The market: how many symbols; per symbol the book's depth (x the default), shape
    (how fast level sizes grow away from the touch) and far-level size; the share of
    accounts with per-symbol leverage (high on one symbol, low on another); whether open
    positions are re-published unchanged (every ``republish_s``, or None: on change only);
    prices and sizes as numbers or decimal strings. Calm burstiness: single-symbol bursts
    (1.5-2.5x for 10-40 s), market-wide ones (1.3-1.8x) and cancel-heavy re-quoting, each
    so many per hour. Stresses: how fast clusters form and cohorts build (30-300 s), the
    cluster's notional against its band's thinned depth, the cohort's size."""

    seed: int
    symbols: int = 6
    book: list[tuple[float, float, float]] = []  # per symbol: depth_x, slope, far_x
    leverage_mix: float = 0.0
    republish_s: float | None = None
    decimal_strings: bool = False
    bursts_per_h: float = 0.0  # single-symbol activity bursts
    wide_bursts_per_h: float = 0.0  # market-wide
    requotes_per_h: float = 0.0  # cancel-heavy re-quoting on one symbol
    formation_s: tuple[float, float] = (30.0, 300.0)  # clusters and cohorts form over a uniform draw in this range
    hold_s: tuple[float, float] = (60.0, 150.0)  # a formed cluster holds this long before its push / end
    depth_ratio: tuple[float, float] = (2.0, 40.0)  # cluster notional / thinned band depth (log-uniform)
    thin: tuple[float, float] = (0.15, 0.5)
    cohort_size: tuple[int, int] = (20, 60)

    @classmethod
    def draw(cls, seed: int) -> "Profile":
        rng = random.Random(f"profile-{seed}")
        n = rng.randint(4, 8)
        book = [(round(math.exp(rng.uniform(math.log(0.3), math.log(3.0))), 3), round(rng.uniform(0.0, 0.2), 3),
                 round(rng.uniform(1.0, 5.0), 2)) for _ in range(n)]
        return cls(seed=seed, symbols=n, book=book, leverage_mix=round(rng.uniform(0.0, 0.6), 3),
                   republish_s=None if rng.random() < 0.3 else float(rng.randint(60, 600)),
                   decimal_strings=rng.random() < 0.5, bursts_per_h=round(rng.uniform(4, 12), 1),
                   wide_bursts_per_h=round(rng.uniform(1, 4), 1), requotes_per_h=round(rng.uniform(2, 8), 1))

    def summary(self) -> str:
        depth = "/".join(f"{d:g}" for d, _, _ in self.book)
        return (f"{self.symbols} sym, depth x{depth}, lev-mix {self.leverage_mix:.2f}, "
                f"republish {'on change' if self.republish_s is None else f'{self.republish_s:g}s'}, "
                f"{'strings' if self.decimal_strings else 'numbers'}")


PROFILE_KINDS = ("cancel_burst", "leverage_jump", "leverage_cohort", "thin_book_cluster", "cascade", "benign_surge")
PROFILE_GAP_S = 120.0  # calm between two episodes (their grace, then the market at rest)


def build_profile(profile: Profile, seconds: float = 2700, start_ts: int = 1_732_400_000_000,
                  accounts: int = 2000, kinds: tuple[str, ...] = PROFILE_KINDS) -> tuple[Market, list[Label]]:
    """The market of ``profile`` with each of ``kinds`` once (shuffled; repeated while time
    is left) after the warm-up, calm bursts spread over the run, and their labels."""
    p = profile
    m = Market(seed=p.seed, symbols=p.symbols, accounts=accounts, start_ts=start_ts, gap_every_s=600,
               book=p.book or None, leverage_mix=p.leverage_mix, republish_s=p.republish_s,
               decimal_strings=p.decimal_strings)
    rng = random.Random(f"episodes-{p.seed}")
    t = lambda s: start_ts + int(s * 1000)  # noqa: E731
    names = [a.name for a in m.accounts]
    rng.shuffle(names)
    used = iter(names)
    syms = [s.spec.name for s in m.symbols]
    labels: list[Label] = []
    kinds = list(kinds)
    rng.shuffle(kinds)
    at, i, episode = WARMUP_S + 60.0, 0, 0
    while kinds:
        kind = kinds[i % len(kinds)]
        symbol = rng.choice(syms)
        form = rng.uniform(*p.formation_s)
        hold = rng.uniform(*p.hold_s)
        length = {"cancel_burst": 10, "leverage_jump": 5 + HOLD_MS / 1000, "leverage_cohort": form + HOLD_MS / 1000,
                  "thin_book_cluster": form + hold + LiquidationCluster.UNWIND_MS / 1000,
                  "cascade": form + hold + 120 + LiquidationCluster.UNWIND_MS / 1000, "benign_surge": 60}[kind]
        if at + length + 60 > seconds:
            break
        episode += 1
        lb = dict(scenario=f"profile-{p.seed}", episode=episode)
        if kind == "cancel_burst":
            acct = f"spoof-{rng.randrange(1000):03d}"
            m.actors.append(CancelBurst(symbol, acct, t(at), t(at + 10)))
            labels.append(Label(kind=kind, symbol=symbol, account=acct, start_ts=t(at), end_ts=t(at + 10),
                                symbols=[symbol], **lb))
        elif kind == "leverage_jump":
            acct = next(used)
            m.actors.append(LeverageJump(symbol, acct, t(at)))
            labels.append(Label(kind=kind, symbol=symbol, account=acct, start_ts=t(at), end_ts=t(at + 5),
                                symbols=[symbol], **lb))
        elif kind == "leverage_cohort":
            accts = [next(used) for _ in range(rng.randint(*p.cohort_size))]
            m.actors.append(LeverageCohort(symbol, accts, t(at), t(at + form)))
            labels.append(Label(kind=kind, symbol=symbol, start_ts=t(at), end_ts=t(at + form), symbols=[symbol],
                                accounts=len(accts), detail={"window_s": round(form, 1)}, **lb))
        else:
            ratio = math.exp(rng.uniform(math.log(p.depth_ratio[0]), math.log(p.depth_ratio[1])))
            thin = rng.uniform(*p.thin)
            accts = [next(used) for _ in range(rng.randint(60, 200))]
            detail = {"formation_s": round(form, 1), "depth_ratio": round(ratio, 2), "thin": round(thin, 2)}
            if kind == "thin_book_cluster":
                end = at + form + hold
                m.actors.append(LiquidationCluster(symbol, accts, t(at), t(end), formation_ms=int(form * 1000),
                                                   depth_ratio=ratio, thin=thin))
                labels.append(Label(kind=kind, symbol=symbol, start_ts=t(at), end_ts=t(end), formation_ts=t(at),
                                    formed_ts=t(at + form), symbols=[symbol], accounts=len(accts), detail=detail,
                                    **lb))
            elif kind == "cascade":
                second = rng.choice([x for x in syms if x != symbol])
                push, end = at + form + hold, at + form + hold + 120
                eps = [Label(kind=kind, symbol=sym, start_ts=t(at), end_ts=t(end), formation_ts=t(at),
                             formed_ts=t(at + form), symbols=[symbol, second], accounts=len(accts), detail=detail,
                             **lb) for sym in (symbol, second)]
                m.actors.append(LiquidationCluster(symbol, accts, t(at), t(end), push_at=t(push), second=second,
                                                   labels=eps, formation_ms=int(form * 1000), depth_ratio=ratio,
                                                   thin=thin))
                labels.extend(eps)
            else:  # benign_surge: the whole market 3x
                m.actors.append(BenignSurge(t(at), t(at + 60)))
                labels.append(Label(kind=kind, symbol=None, start_ts=t(at), end_ts=t(at + 60), **lb))
        at += length + PROFILE_GAP_S
        i += 1
    # calm burstiness over the whole run (after the warm-up), independent of the episodes
    for rate, make in ((p.bursts_per_h, lambda: (rng.choice(syms), rng.uniform(1.5, 2.5), False)),
                       (p.wide_bursts_per_h, lambda: (None, rng.uniform(1.3, 1.8), False)),
                       (p.requotes_per_h, lambda: (rng.choice(syms), rng.uniform(1.0, 3.0), True))):
        n = _poisson_count(rng, rate * max(0.0, seconds - WARMUP_S) / 3600)
        for _ in range(n):
            sym, x, requote = make()
            start = rng.uniform(WARMUP_S, max(WARMUP_S, seconds - 40))
            dur = rng.uniform(10, 40)
            m.actors.append(CalmBurst(sym, t(start), t(start + dur), x, requote))
            labels.append(Label(kind="calm_burst", symbol=sym, start_ts=t(start), end_ts=t(start + dur),
                                scenario=f"profile-{p.seed}", symbols=[sym] if sym else syms,
                                detail={"x": round(x, 2), "requote": requote}))
    labels.sort(key=lambda lb: lb.start_ts)
    return m, labels


def _poisson_count(rng: random.Random, lam: float) -> int:
    return poisson(rng, lam) if lam < 30 else max(0, round(rng.gauss(lam, math.sqrt(lam))))
