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

import random
from typing import Callable

import msgspec

from monitor.simulate.market import MMR, Market, SymbolState, poisson

SCENARIOS = ("calm", "cancel_burst", "leverage_jump", "thin_book_cluster", "cascade", "benign_surge", "mixed")


class Label(msgspec.Struct, kw_only=True):
    kind: str
    symbol: str | None
    account: str | None = None
    start_ts: int
    end_ts: int
    first_liquidation_ts: int | None = None
    scenario: str = ""


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
                 push_at: int | None = None, second: str | None = None, labels: list[Label] = ()) -> None:
        super().__init__(start, end)
        self.symbol, self.accounts, self.distance = symbol, accounts, distance
        self.push_at, self.second = push_at, second
        self.labels = list(labels)  # stamped with the first forced liquidation's time
        step = (min(end, push_at or end) - start) * 0.3 / max(1, len(accounts))
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
        while self.schedule and self.schedule[0][0] <= m.ts:
            _, name = self.schedule.pop(0)
            a = next(a for a in m.accounts if a.name == name)
            d = self.distance * m.rng.uniform(0.9, 1.1)
            lev = round(1.0 / (d + MMR), 2)  # isolated long: liq = entry * (1 - 1/lev + mmr)
            size = round(max(a.equity, 20_000.0) * lev * 0.8 / s.mid, 6)
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
            s.thin = 0.2  # liquidity in the band and below it is thin until the end
            lo, hi = s.mid * (1 - self.distance * 1.6), s.mid * (1 - self.distance * 0.4)
            self.restore = {p: q for p, q in s.bids.items() if lo <= p <= hi}
            m.emit_book(s, {p: round(q * 0.2, 6) for p, q in self.restore.items()}, {}, out)
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
        return [Label(kind="leverage_jump", symbol=symbol, start_ts=t(at_s), end_ts=t(at_s + 30),
                      scenario=scenario)]
    if kind == "thin_book_cluster":
        accts = [next(used) for _ in range(150)]
        m.actors.append(LiquidationCluster(symbol, accts, t(at_s), t(at_s + 120)))
        return [Label(kind=kind, symbol=symbol, start_ts=t(at_s), end_ts=t(at_s + 120), scenario=scenario)]
    if kind == "cascade":
        second = next(s.spec.name for s in m.symbols if s.spec.name != symbol)
        accts = [next(used) for _ in range(200)]
        labels = [Label(kind="cascade", symbol=sym, start_ts=t(at_s), end_ts=t(at_s + 300), scenario=scenario)
                  for sym in (symbol, second)]
        m.actors.append(LiquidationCluster(symbol, accts, t(at_s), t(at_s + 300), push_at=t(at_s + 180),
                                           second=second, labels=labels))
        return labels
    raise ValueError(kind)


def play(m: Market, seconds: float):
    """The snapshots, then each step's events (cascade labels get their liquidation time)."""
    yield m.snapshots()
    yield from m.run(seconds)
