"""A deterministic, believable calm perpetual-futures market in the native protocol.

Pure: a seeded ``random.Random``, simulated event time, no I/O. ``step()`` advances
``step_ms`` of event time and returns the events that happened, as native-protocol
dicts. Prices follow correlated log random walks (a common market factor plus
idiosyncratic noise); each symbol has a grid L2 book re-centred on its mid, L3 order
flow from market makers and takers that the book reflects, trades, marks once a
second, and a few thousand accounts whose positions and cross collateral change.
Now and then one book message is dropped (a sequence gap) and a fresh snapshot follows
a little later, as a venue does on resync.

>>> m = Market(seed=1, symbols=2, accounts=50, start_ts=1_732_400_000_000)
>>> events = [e for _ in range(40) for e in m.step()]
>>> sorted({e["type"] for e in events}) == sorted({"book", "order", "trade", "mark", "position", "account"})
True
>>> m.step() == Market(seed=1, symbols=2, accounts=50, start_ts=1_732_400_000_000).run_steps(41)[-1]
True
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field
from typing import Iterator

from monitor.state.liquidation import DEFAULT_TIERS, liquidation_price


@dataclass(frozen=True)
class SymbolSpec:
    name: str
    price: float
    tick: float
    vol_per_s: float  # std-dev of log return per second
    beta: float  # loading on the common market factor
    level_notional: float  # typical resting notional per level near the touch


DEFAULT_SYMBOLS = [
    SymbolSpec("BTC-PERP", 64_000.0, 0.5, 0.00018, 1.0, 250_000.0),
    SymbolSpec("ETH-PERP", 3_400.0, 0.05, 0.00024, 1.1, 150_000.0),
    SymbolSpec("SOL-PERP", 150.0, 0.01, 0.00035, 1.3, 60_000.0),
    SymbolSpec("BNB-PERP", 580.0, 0.05, 0.00022, 0.9, 40_000.0),
    SymbolSpec("XRP-PERP", 0.60, 0.0001, 0.00030, 1.0, 30_000.0),
    SymbolSpec("DOGE-PERP", 0.15, 0.00001, 0.00040, 1.2, 25_000.0),
    SymbolSpec("AVAX-PERP", 35.0, 0.001, 0.00038, 1.2, 20_000.0),
    SymbolSpec("LINK-PERP", 14.0, 0.001, 0.00033, 1.1, 15_000.0),
]

MMR = 0.005  # maintenance margin rate used for the accounts' liquidation prices (scenarios, cross accounts)
TAKER_FEE = 0.0005  # charged on a forced close (part of an isolated position's liquidation price)


def isolated_liq(size: float, entry: float, leverage: float) -> float | None:
    """The venue's liquidation price of an isolated position: its margin (1/leverage of the
    entry notional) down to the maintenance tier of its notional plus the closing fee."""
    return liquidation_price(size, entry, leverage, tiers=DEFAULT_TIERS, fee=TAKER_FEE)


def max_notional(leverage: float) -> float:
    """The venue's leverage brackets: a position at ``leverage`` may be at most as large as
    the last maintenance tier (perpwatch's default tiers) whose rate is <= half its
    initial margin 1 / leverage, as venues cap leverage by notional.

    >>> max_notional(20.0), max_notional(5.0)
    (5000000.0, inf)
    """
    cap = 0.0
    for up_to, rate in DEFAULT_TIERS:
        if rate * 2 > 1 / leverage:
            break
        cap = up_to
    return cap
FAR_LEVELS = 25  # coarse-grid levels a side beyond the tick levels (20 bps apart: out to ~5%)


@dataclass
class SymbolState:
    spec: SymbolSpec
    mid: float
    seq: int = 0
    bids: dict[float, float] = field(default_factory=dict)
    asks: dict[float, float] = field(default_factory=dict)
    orders: dict[int, tuple[str, str, float, float]] = field(default_factory=dict)  # id -> (acct, side, px, size)
    last: float = 0.0
    funding: float = 0.0001
    open_interest: float = 0.0
    resync_at: int = 0  # event time of the snapshot that ends a dropped-message gap
    drift_per_s: float = 0.0  # scenarios push prices with this (log return per second)
    thin: float = 1.0  # scenarios thin the book: level sizes are multiplied by this
    coarse: float = 0.0  # grid step of the far levels (set at start: 20 bps of the price)
    # the venue's liquidation engine for isolated positions: (-liq, account, size, entry) for
    # longs (the highest liquidation price on top), (liq, account, size, entry) for shorts;
    # an entry no longer matching the account's position is stale and skipped
    liq_longs: list = field(default_factory=list)
    liq_shorts: list = field(default_factory=list)
    # the market profile's knobs (defaults: the original calm market)
    depth_x: float = 1.0  # resting size per level x this (the symbol's depth)
    slope: float = 0.08  # book shape: a level k ticks out holds (0.6 + slope x k) x the touch's typical size
    far_x: float = 3.0  # the coarse far levels hold far_x x the typical size
    activity: float = 1.0  # maker and taker rates x this (calm bursts)
    requote: float = 0.0  # extra cancel + re-place pairs per second, as a multiple of maker_rate (re-quoting)
    want_key: tuple | None = None  # _recentre's cache: (best bid, far-grid anchor) -> the wanted levels
    want: tuple = ()


@dataclass
class AccountSim:
    name: str
    equity: float
    positions: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # sym -> (size, entry, lev)
    isolated: bool = False
    leverage: float = 5.0  # the account's usual setting: people rarely change it
    sym_leverage: dict[str, float] = field(default_factory=dict)  # per-symbol settings (a profile's leverage mix)


class Market:
    """The calm market. Hooks for scenarios: ``actors`` are called each step."""

    def __init__(self, seed: int = 7, symbols: int = 6, accounts: int = 3000, start_ts: int = 1_732_400_000_000,
                 step_ms: int = 50, gap_every_s: float = 90.0, depth: int = 30,
                 maker_rate: float = 60.0, taker_rate: float = 4.0, position_rate: float = 6.0,
                 book: list[tuple[float, float, float]] | None = None, leverage_mix: float = 0.0,
                 republish_s: float | None = None, decimal_strings: bool = False) -> None:
        """``book``: per symbol (depth_x, slope, far_x); ``leverage_mix``: the share of accounts
        that set leverage per symbol (high on one, low on another); ``republish_s``: every open
        position is re-sent unchanged about this often (None: on change only);
        ``decimal_strings``: prices and sizes go out as decimal strings, as many venues send them."""
        if not 1 <= symbols <= len(DEFAULT_SYMBOLS):
            raise ValueError(f"symbols must be 1..{len(DEFAULT_SYMBOLS)}")
        self.rng = random.Random(seed)
        self.ts = start_ts
        self.step_ms = step_ms
        self.gap_every_s = gap_every_s
        self.depth = depth
        self.maker_rate = maker_rate  # new + cancel orders per second per symbol
        self.taker_rate = taker_rate  # taker trades per second per symbol
        self.position_rate = position_rate  # position changes per second, whole market
        self.symbols = [SymbolState(s, s.price, coarse=_tick_round(s.price * 0.002, s.tick))
                        for s in DEFAULT_SYMBOLS[:symbols]]
        self.by_name = {s.spec.name: s for s in self.symbols}
        for s, shape in zip(self.symbols, book or ()):
            s.depth_x, s.slope, s.far_x = shape
        self.republish_s = republish_s
        self.decimal_strings = decimal_strings
        self.accounts = [AccountSim(f"a-{i:05d}", self.rng.lognormvariate(math.log(20_000), 1.0),
                                    isolated=self.rng.random() < 0.15,
                                    leverage=float(self.rng.choice((2, 3, 3, 5, 5, 5, 10, 10, 15, 20))))
                         for i in range(accounts)]
        if leverage_mix > 0:  # drawn after the accounts, so the default market's stream is unchanged
            names = [s.spec.name for s in self.symbols]
            for a in self.accounts:
                if self.rng.random() < leverage_mix:
                    hi, lo = self.rng.sample(names, 2) if len(names) > 1 else (names[0], names[0])
                    a.sym_leverage[hi] = float(self.rng.choice((15, 20, 25)))
                    a.sym_leverage[lo] = float(self.rng.choice((2, 3)))
        self.makers = [f"mm-{i}" for i in range(8)]
        self.next_order_id = 1
        self.next_mark_ts = start_ts
        self.bootstrap = list(range(accounts))  # accounts whose first positions are still to be sent
        self.actors: list = []  # scenario hooks: callables (market, events) -> None, run each step
        self.dropped = 0
        for s in self.symbols:
            self._recentre(s, {}, {})

    # -- public --------------------------------------------------------------------------
    def snapshots(self) -> list[dict]:
        """A book snapshot per symbol at its current seq (what a server sends on connect)."""
        out = [self._snapshot(s) for s in self.symbols]
        return [_as_strings(e) for e in out] if self.decimal_strings else out

    def step(self) -> list[dict]:
        self.ts += self.step_ms
        dt = self.step_ms / 1000.0
        out: list[dict] = []
        factor = self.rng.gauss(0.0, 1.0)
        for s in self.symbols:
            self._step_symbol(s, factor, dt, out)
            self._liquidations(s, out)
        if self.ts >= self.next_mark_ts:
            self.next_mark_ts += 1000
            for s in self.symbols:
                out.append(self._mark(s))
        self._positions(dt, out)
        if self.republish_s:
            self._republish(dt, out)
        for actor in self.actors:
            actor(self, out)
        if self.decimal_strings:
            return [_as_strings(e) for e in out]
        return out

    def run_steps(self, n: int) -> list[list[dict]]:
        return [self.step() for _ in range(n)]

    def run(self, seconds: float) -> Iterator[list[dict]]:
        for _ in range(int(seconds * 1000 / self.step_ms)):
            yield self.step()

    # -- one symbol ----------------------------------------------------------------------
    def _step_symbol(self, s: SymbolState, factor: float, dt: float, out: list[dict]) -> None:
        spec, rng = s.spec, self.rng
        sd = spec.vol_per_s * math.sqrt(dt)
        s.mid *= math.exp(sd * (spec.beta * factor * 0.7 + rng.gauss(0.0, 1.0) * 0.7) + s.drift_per_s * dt)
        bids, asks = {}, {}  # this step's level changes: price -> new absolute size
        self._recentre(s, bids, asks)
        for _ in range(poisson(rng, self.maker_rate * s.activity * dt)):
            self._maker(s, bids, asks, out)
        for _ in range(poisson(rng, self.taker_rate * s.activity * dt * (3.0 if rng.random() < 0.002 else 1.0))):
            self._taker(s, bids, asks, out)
        if s.requote:
            self._requote(s, bids, asks, out, poisson(rng, self.maker_rate * s.requote * dt))
        if s.resync_at and self.ts >= s.resync_at:
            s.resync_at = 0
            s.seq += 1
            out.append(self._snapshot(s))
            return
        if not bids and not asks:
            return
        s.seq += 1
        if self.gap_every_s > 0 and not s.resync_at and rng.random() < self._gap_p(dt):
            self.dropped += 1  # the message is lost on the way: consumers see a seq gap
            s.resync_at = self.ts + rng.randint(1000, 2000)
            return
        out.append({"type": "book", "symbol": spec.name, "ts": self.ts, "seq": s.seq,
                    "bids": [[p, q] for p, q in bids.items()], "asks": [[p, q] for p, q in asks.items()]})

    def _gap_p(self, dt: float) -> float:
        return dt / self.gap_every_s / len(self.symbols)

    def _recentre(self, s: SymbolState, bids: dict, asks: dict) -> None:
        """Keep `depth` tick levels a side around mid, then `far` levels on a coarse grid out
        to ~5% (anchored in price, so they move only when mid crosses a grid step)."""
        spec, tick, coarse = s.spec, s.spec.tick, s.coarse
        best_bid = math.floor(s.mid / tick - 0.5) * tick
        anchor = math.floor(s.mid / coarse) * coarse
        key = (best_bid, anchor)
        if s.want_key == key:  # mid moved within a tick: the same levels (built once, same order)
            want_bid, want_ask = s.want
        else:
            best_ask = best_bid + tick
            want_bid = {round(best_bid - k * tick, 10) for k in range(self.depth)}
            want_ask = {round(best_ask + k * tick, 10) for k in range(self.depth)}
            inner_bid, inner_ask = best_bid - self.depth * tick, best_ask + self.depth * tick
            for j in range(1, FAR_LEVELS + 1):
                pb, pa = round(anchor - j * coarse, 10), round(anchor + (j + 1) * coarse, 10)
                if pb < inner_bid:
                    want_bid.add(pb)
                if pa > inner_ask:
                    want_ask.add(pa)
            s.want_key, s.want = key, (want_bid, want_ask)
        for side, want, changes in ((s.bids, want_bid, bids), (s.asks, want_ask, asks)):
            for p in [p for p in side if p not in want]:
                del side[p]
                changes[p] = 0.0
            for p in want:
                if p not in side:
                    k = abs(p - s.mid) / tick
                    size = self._level_size(s, k, far=abs(p - s.mid) > self.depth * tick) * s.thin
                    side[p] = size
                    changes[p] = size
        if len(s.orders) > 4000:  # bound the maker orders we track (oldest forgotten)
            for oid in list(s.orders)[:1000]:
                del s.orders[oid]

    def emit_book(self, s: SymbolState, bids: dict, asks: dict, out: list[dict]) -> None:
        """Scenarios: set levels (absolute sizes, 0 removes) and send them as one book message."""
        for side, changes in ((s.bids, bids), (s.asks, asks)):
            for p, q in changes.items():
                if q > 0:
                    side[p] = q
                else:
                    side.pop(p, None)
        s.seq += 1
        out.append({"type": "book", "symbol": s.spec.name, "ts": self.ts, "seq": s.seq,
                    "bids": [[p, q] for p, q in bids.items()], "asks": [[p, q] for p, q in asks.items()]})

    def _level_size(self, s: SymbolState, k: float, far: bool = False) -> float:
        base = s.spec.level_notional * s.depth_x / s.spec.price
        scale = s.far_x if far else 0.6 + s.slope * k
        return round(base * scale * self.rng.lognormvariate(0.0, 0.35), 6)

    def _requote(self, s: SymbolState, bids: dict, asks: dict, out: list[dict], n: int) -> None:
        """Market makers re-quote: cancel a resting order and place it again a level away
        (cancel-heavy flow, no trades, the book about unchanged)."""
        rng, spec = self.rng, s.spec
        for _ in range(n):
            if not s.orders:
                return
            oid = next(iter(s.orders))
            acct, side, px, size = s.orders.pop(oid)
            book, changes = (s.bids, bids) if side == "buy" else (s.asks, asks)
            out.append({"type": "order", "symbol": spec.name, "ts": self.ts, "order_id": oid, "account": acct,
                        "action": "cancel", "side": side, "price": px, "size": size})
            if px in book:
                book[px] = max(round(book[px] - size, 6), 0.0)
                changes[px] = book[px]
                if book[px] <= 0:
                    del book[px]
            if not book:
                continue
            levels = sorted(book, reverse=(side == "buy"))[:5]
            px = levels[rng.randrange(len(levels))]
            self._place(s, acct, side, px, size, book, changes, out)

    def _maker(self, s: SymbolState, bids: dict, asks: dict, out: list[dict]) -> None:
        rng, spec = self.rng, s.spec
        acct = rng.choice(self.makers)
        if s.orders and rng.random() < 0.48:
            oid = rng.choice(list(s.orders)) if len(s.orders) < 64 else next(iter(s.orders))
            acct, side, px, size = s.orders.pop(oid)
            book, changes = (s.bids, bids) if side == "buy" else (s.asks, asks)
            if px in book:
                book[px] = max(round(book[px] - size, 6), 0.0)
                if book[px] <= 0:
                    del book[px]
                    changes[px] = 0.0
                else:
                    changes[px] = book[px]
            out.append({"type": "order", "symbol": spec.name, "ts": self.ts, "order_id": oid, "account": acct,
                        "action": "cancel", "side": side, "price": px, "size": size})
            return
        side = "buy" if rng.random() < 0.5 else "sell"
        book, changes = (s.bids, bids) if side == "buy" else (s.asks, asks)
        if not book:
            return
        levels = sorted(book, reverse=(side == "buy"))[: min(10, len(book))]
        px = levels[min(int(rng.expovariate(0.5)), len(levels) - 1)]
        size = round(spec.level_notional * s.depth_x / spec.price * rng.uniform(0.05, 0.3), 6)
        self._place(s, acct, side, px, size, book, changes, out)

    def _place(self, s: SymbolState, acct, side: str, px: float, size: float, book: dict, changes: dict,
               out: list[dict]) -> None:
        """A new resting order: the level grows, the order is remembered (to cancel it later)."""
        book[px] = round(book[px] + size, 6)
        changes[px] = book[px]
        oid = self.next_order_id
        self.next_order_id += 1
        s.orders[oid] = (acct, side, px, size)
        out.append({"type": "order", "symbol": s.spec.name, "ts": self.ts, "order_id": oid, "account": acct,
                    "action": "new", "side": side, "price": px, "size": size})

    def _taker(self, s: SymbolState, bids: dict, asks: dict, out: list[dict]) -> None:
        rng, spec = self.rng, s.spec
        side = "buy" if rng.random() < 0.5 else "sell"
        book, changes = (s.asks, asks) if side == "buy" else (s.bids, bids)
        if not book:
            return
        px = min(book) if side == "buy" else max(book)
        size = round(min(book[px] * rng.uniform(0.05, 0.6), book[px]), 6)
        if size <= 0:
            return
        left = round(book[px] - size, 6)
        if left <= 0:
            del book[px]
            changes[px] = 0.0
        else:
            book[px] = left
            changes[px] = left
        s.last = px
        taker = f"a-{rng.randrange(len(self.accounts)):05d}"
        oid = self.next_order_id
        self.next_order_id += 1
        out.append({"type": "order", "symbol": spec.name, "ts": self.ts, "order_id": oid, "account": taker,
                    "action": "fill", "side": side, "price": px, "size": size})
        out.append({"type": "trade", "symbol": spec.name, "ts": self.ts, "price": px, "size": size, "side": side})

    def _mark(self, s: SymbolState) -> dict:
        rng = self.rng
        s.funding = min(max(s.funding + rng.gauss(0, 2e-6), -0.00075), 0.00075)
        index = s.mid * (1 + rng.gauss(0, 5e-5))
        mark = index * (1 + s.funding * 0.5 + rng.gauss(0, 2e-5))
        ev = {"type": "mark", "symbol": s.spec.name, "ts": self.ts, "mark": _r(mark), "index": _r(index),
              "funding_rate": round(s.funding, 8), "open_interest": round(s.open_interest, 4)}
        if s.last:
            ev["last"] = s.last
        return ev

    def _snapshot(self, s: SymbolState) -> dict:
        return {"type": "book", "symbol": s.spec.name, "ts": self.ts, "seq": s.seq, "snapshot": True,
                "bids": [[p, q] for p, q in sorted(s.bids.items(), reverse=True)],
                "asks": [[p, q] for p, q in sorted(s.asks.items())]}

    # -- accounts ------------------------------------------------------------------------
    def _positions(self, dt: float, out: list[dict]) -> None:
        rng = self.rng
        n = poisson(rng, self.position_rate * dt)
        if self.bootstrap:  # the first positions of every account, over the first seconds
            n += min(len(self.bootstrap), max(1, len(self.accounts) * self.step_ms // 5000))
        for _ in range(n):
            boot = bool(self.bootstrap)
            if self.bootstrap:
                a = self.accounts[self.bootstrap.pop()]
                picks = self._pick_symbols(1 + int(rng.random() < 0.35))
            else:
                a = rng.choice(self.accounts)
                picks = self._pick_symbols(1)
            for s in picks:
                self._change_position(a, s, out, opened_earlier=boot)
            out.append(self._account_event(a))

    def _pick_symbols(self, k: int) -> list[SymbolState]:
        """Traders go where the liquidity is: symbols weighted by their book depth."""
        weights = [s.spec.level_notional for s in self.symbols]
        picks: list[SymbolState] = []
        while len(picks) < min(k, len(self.symbols)):
            s = self.rng.choices(self.symbols, weights=weights)[0]
            if s not in picks:
                picks.append(s)
        return picks

    def _change_position(self, a: AccountSim, s: SymbolState, out: list[dict], opened_earlier: bool = False) -> None:
        """``opened_earlier``: a position the account already held when the feed started, so
        its entry is spread around today's price (positions were opened over days)."""
        rng = self.rng
        lev = a.sym_leverage.get(s.spec.name, a.leverage) if a.sym_leverage else a.leverage
        old = a.positions.get(s.spec.name)
        # the margin check: all positions together stay within 0.6 x equity x leverage
        others = sum(abs(sz) * self.by_name[sym].mid for sym, (sz, _, _) in a.positions.items()
                     if sym != s.spec.name)
        room = a.equity * lev * 0.6 - others
        if (old is not None and rng.random() < 0.25) or room < a.equity * 0.05:
            if old is None:
                return
            size, entry = 0.0, old[1]
        else:
            notional = min(a.equity * lev * rng.uniform(0.2, 0.5), room, max_notional(lev))
            size = round(notional / s.mid * (1 if rng.random() < 0.52 else -1), 6)
            entry = _r(s.mid * math.exp(rng.gauss(0.0, 0.02)) if opened_earlier else s.mid)
        s.open_interest = max(0.0, s.open_interest - abs(old[0]) if old else s.open_interest) + abs(size)
        if size == 0:
            a.positions.pop(s.spec.name, None)
        else:
            a.positions[s.spec.name] = (size, entry, lev)
        ev = {"type": "position", "account": a.name, "symbol": s.spec.name, "ts": self.ts, "size": size,
              "entry_price": entry, "leverage": lev, "margin_mode": "isolated" if a.isolated else "cross"}
        if size:
            sign = 1 if size > 0 else -1
            liq = isolated_liq(size, entry, lev) if a.isolated else None
            if liq is not None and opened_earlier and (liq >= s.mid if size > 0 else liq <= s.mid):
                entry = ev["entry_price"] = _r(s.mid)  # one already past it would have been closed: opened now
                a.positions[s.spec.name] = (size, entry, lev)
                liq = isolated_liq(size, entry, lev)
            if liq is not None:
                heapq.heappush(s.liq_longs if size > 0 else s.liq_shorts,
                               (-liq if size > 0 else liq, a.name, size, entry))
            else:
                liq = max(entry * (1 - sign * (1 / lev - MMR)), 0.0)
            ev["liq_price"] = _r(liq)
        out.append(ev)

    def _liquidations(self, s: SymbolState, out: list[dict]) -> None:
        """The venue closes isolated positions whose liquidation price the price has reached."""
        for heap, long in ((s.liq_longs, True), (s.liq_shorts, False)):
            while heap and (-heap[0][0] >= s.mid if long else heap[0][0] <= s.mid):
                _, name, size, entry = heapq.heappop(heap)
                a = self.accounts[int(name[2:])]
                pos = a.positions.get(s.spec.name)
                if pos is None or pos[0] != size or pos[1] != entry or not a.isolated:
                    continue  # changed since (or taken over by a scenario)
                del a.positions[s.spec.name]
                s.open_interest = max(0.0, s.open_interest - abs(size))
                px = round(s.mid, 10)
                side = "sell" if long else "buy"
                out.append({"type": "liquidation", "symbol": s.spec.name, "ts": self.ts, "side": side, "price": px,
                            "size": abs(size), "account": name})
                out.append({"type": "trade", "symbol": s.spec.name, "ts": self.ts, "price": px, "size": abs(size),
                            "side": side, "liquidation": True})
                out.append({"type": "position", "account": name, "symbol": s.spec.name, "ts": self.ts, "size": 0.0,
                            "entry_price": entry, "leverage": pos[2], "margin_mode": "isolated"})
                out.append(self._account_event(a))

    def _republish(self, dt: float, out: list[dict]) -> None:
        """Venues that re-send every open position on a timer: each about every
        ``republish_s``, unchanged (same size, entry and leverage)."""
        rng = self.rng
        for _ in range(poisson(rng, len(self.accounts) * dt / self.republish_s)):
            a = rng.choice(self.accounts)
            for sym, (size, entry, lev) in a.positions.items():
                s = self.by_name[sym]
                sign = 1 if size > 0 else -1
                liq = isolated_liq(size, entry, lev) if a.isolated else None
                if liq is None:
                    liq = max(entry * (1 - sign * (1 / lev - MMR)), 0.0)
                out.append({"type": "position", "account": a.name, "symbol": sym, "ts": self.ts, "size": size,
                            "entry_price": entry, "leverage": lev,
                            "margin_mode": "isolated" if a.isolated else "cross", "liq_price": _r(liq)})

    def _account_event(self, a: AccountSim) -> dict:
        mm = sum(abs(sz) * self.by_name[sym].mid * MMR for sym, (sz, _, _) in a.positions.items())
        return {"type": "account", "account": a.name, "ts": self.ts, "equity": round(a.equity, 2),
                "maintenance_margin": round(mm, 2)}


def poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method; lam is small (a few per step)."""
    if lam <= 0:
        return 0
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def _tick_round(x: float, tick: float) -> float:
    return max(tick, round(round(x / tick) * tick, 10))


_NUMERIC = ("price", "size", "mark", "index", "last", "entry_price", "liq_price", "equity",
            "maintenance_margin", "open_interest")


def _as_strings(e: dict) -> dict:
    """Prices and sizes as decimal strings (``"64000.5"``), as many venues send them."""
    e = dict(e)
    for k in _NUMERIC:
        v = e.get(k)
        if isinstance(v, float):
            e[k] = repr(v)
    for side in ("bids", "asks"):
        if side in e:
            e[side] = [[repr(float(p)), repr(float(q))] for p, q in e[side]]
    return e


def _r(x: float) -> float:
    return float(f"{x:.10g}")
