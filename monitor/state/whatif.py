"""What if the price moves X% now? The path from a shock to the next symbol, from real positions
against the real books.

``Snapshot.of(state)`` copies what the engine reads from the live state (each symbol's mark
and book within ``cap`` of it; every position with its account, size, entry, leverage and
margin mode; cross accounts' equity). ``run(snapshot, symbol, shock)`` moves that symbol's
price by ``shock`` (a fraction: -0.02 is -2%) and iterates rounds:

1. the shock itself takes the book between the mark and the shocked price (whatever sold
   it there ate those bids);
2. positions whose liquidation condition now holds are closed at market by the venue:
   isolated ones when the price crosses their liquidation price (``liquidation_price``:
   tiers, taker fee); a cross account when its equity marked at the current prices falls to
   its maintenance requirement (tiers plus the fee on the close) — then *all* its cross
   positions are closed, on every symbol: that is how a shock reaches the next symbol;
3. on each symbol the round's forced flow (longs sold, shorts bought, netted) walks the
   remaining book from the top; the price moves to the last level it takes; a book eaten
   to ``cap`` of the mark is *exhausted* (the price stops at the cap);
4. the next round looks at the new prices; it stops when a round closes nothing, or after
   ``max_rounds``.

Positions already liquidatable before any shock (stale equity, a venue that has not acted
yet) are left out and counted (``already_liquidatable``): they say nothing about the shock.
Funding and correlated moves are not modelled: a symbol moves only by the flow that hits it.

``critical_shock`` walks a ladder of shocks (0.5, 1, 2, 3, 5, 10%, both ways) and returns
the smallest after which the chain *sustains itself*: the forced flow it triggers eats the
book to the cap, or crosses further liquidation prices (a second round) and moves the
price at least ``amplification`` x the shock.

Pure and deterministic (no clock, no I/O; results do not depend on the order positions
were added). Cost: O(levels + positions) per round on the symbols a round touches.

>>> snap = Snapshot(marks={"X": 100.0}, books={"X": ([(99.0, 10.0), (98.0, 10.0), (90.0, 100.0)], [])},
...                 positions=[Position("a", "X", 12.0, 100.0, 20.0, True)], equity={})
>>> p = run(snap, "X", -0.05)  # the 20x long liquidates at 95.43: sold into what is left below 95
>>> round(p.liquidated_notional), round(p.moves["X"], 4), p.text()
(1200, -0.1, '-5% on X liquidates $1,200 (1 account), eats $1,080 of bids, moves -10%')
>>> run(snap, "X", -0.02).text()  # 98 is above its liquidation price
'-2% on X liquidates nothing'
"""

from __future__ import annotations

from typing import NamedTuple

from monitor.fmt import money
from monitor.state.liquidation import DEFAULT_TIERS, Tiers, liquidation_price, maintenance_rate

LADDER = (0.005, 0.01, 0.02, 0.03, 0.05, 0.10)
CAP = 0.20  # books are read and walked to this far from the mark
MAX_ROUNDS = 50


class Position(NamedTuple):
    account: str
    symbol: str
    size: float  # signed: long > 0
    entry: float
    leverage: float
    isolated: bool


class Snapshot:
    """What the engine reads, copied out of the live state (so a run never sees it change)."""

    def __init__(self, marks: dict[str, float], books: dict[str, tuple[list, list]], positions: list[Position],
                 equity: dict[str, float], tiers: dict[str, Tiers] | None = None, default_tiers: Tiers = DEFAULT_TIERS,
                 fee: float = 0.0005, cap: float = CAP) -> None:
        self.marks = marks
        self.books = books  # symbol -> (bids best first, asks best first), each [(price, size)]
        self.equity = equity  # cross accounts' equity (an account without one: its cross positions count as isolated)
        self.tiers = tiers or {}
        self.default_tiers = default_tiers
        self.fee = fee
        self.cap = cap
        # sorted: results never depend on the order positions were added
        self.positions = sorted(positions)
        self.by_symbol: dict[str, list[Position]] = {}
        self.cross: dict[str, list[Position]] = {}  # account -> its cross positions
        for p in self.positions:
            if not p.size or p.symbol not in marks:
                continue
            self.by_symbol.setdefault(p.symbol, []).append(p)
            if not p.isolated and p.account in equity:
                self.cross.setdefault(p.account, []).append(p)

    @classmethod
    def of(cls, state, tiers: dict[str, Tiers] | None = None, default_tiers: Tiers = DEFAULT_TIERS,
           fee: float = 0.0005, cap: float = CAP) -> Snapshot:
        """Copy a ``MarketState`` (O(accounts + book levels within the cap))."""
        marks: dict[str, float] = {}
        books: dict[str, tuple[list, list]] = {}
        for symbol in state.symbols():
            px = state.price(symbol)
            book = state.books.get(symbol)
            if px is None or book is None or not book.reliable:
                continue
            marks[symbol] = px
            bids, asks = book.sorted_levels()
            books[symbol] = ([lv for lv in bids if lv[0] >= px * (1 - cap)],
                             [lv for lv in asks if lv[0] <= px * (1 + cap)])
        positions, equity = [], {}
        for name, acct in state.accounts.accounts.items():
            eq = acct.equity
            if eq is not None:
                equity[name] = eq
            for symbol, p in acct.positions.items():
                if p.size:
                    positions.append(Position(name, symbol, p.size, p.entry, p.leverage, bool(p.isolated)))
        return cls(marks, books, positions, equity, tiers, default_tiers, fee, cap)

    def tiers_of(self, symbol: str) -> Tiers:
        return self.tiers.get(symbol, self.default_tiers)


class Round(NamedTuple):
    symbol: str
    price_before: float
    price_after: float
    liquidated_notional: float  # positions closed this round, at the snapshot's mark (the size that goes)
    accounts: int
    cross_accounts: int  # of which closed because their shared collateral failed
    depth_consumed: float
    exhausted: bool
    sold: bool  # the round's net forced flow sold into the bids (else bought the asks)


class Path(NamedTuple):
    symbol: str
    shock: float
    rounds: list[list[Round]]  # per round, per symbol it touched
    liquidated_notional: float
    accounts: int
    depth_consumed: float
    moves: dict[str, float]  # symbol -> final price / mark - 1
    exhausted: list[str]
    already_liquidatable: int

    def by_symbol(self) -> dict[str, dict]:
        """Totals per symbol over all rounds, the shocked symbol first."""
        out: dict[str, dict] = {}
        for rnd in self.rounds:
            for r in rnd:
                t = out.setdefault(r.symbol, {"liquidated_notional": 0.0, "accounts": 0, "cross_accounts": 0,
                                              "depth_consumed": 0.0, "side": "bids" if r.sold else "asks"})
                t["liquidated_notional"] += r.liquidated_notional
                t["accounts"] += r.accounts
                t["cross_accounts"] += r.cross_accounts
                t["depth_consumed"] += r.depth_consumed
        first = {self.symbol: out.pop(self.symbol)} if self.symbol in out else {}
        return first | out

    def sustains(self, amplification: float = 2.0) -> bool:
        """The chain feeds itself: a book eaten to the cap; or forced flow that crossed more
        liquidation prices (a second round) and moved the shocked symbol at least
        ``amplification`` x the shock. One round that the book absorbs is not a chain."""
        if self.exhausted:
            return True
        return len(self.rounds) >= 2 and abs(self.moves.get(self.symbol, 0.0)) >= amplification * abs(self.shock)

    def text(self) -> str:
        """The line a person reads first."""
        pct = f"{self.shock * 100:+.3g}%"
        per = self.by_symbol()
        if not per:
            return f"{pct} on {self.symbol} liquidates nothing"
        parts = []
        for i, (symbol, t) in enumerate(per.items()):
            n = t["accounts"]
            move = self.moves.get(symbol, 0.0)
            if i == 0:
                parts.append(f"{pct} on {symbol} liquidates {money(t['liquidated_notional'])} ({n} account"
                             f"{'s' if n != 1 else ''}), eats {money(t['depth_consumed'])} of {t['side']}, moves "
                             f"{move * 100:+.3g}%" + (" (book exhausted)" if symbol in self.exhausted else ""))
            else:
                verb = "sell" if t["side"] == "bids" else "buy"
                parts.append(f"{t['cross_accounts'] or n} cross account{'s' if (t['cross_accounts'] or n) != 1 else ''}"
                             f" then {verb} {money(t['liquidated_notional'])} of {symbol} ({move * 100:+.3g}%)")
        return "; ".join(parts)


class _Book:
    """One side walk per symbol: remaining levels from a pointer (a level partly taken keeps
    its remainder)."""

    __slots__ = ("bids", "asks", "bi", "ai", "brem", "arem", "lo", "hi")

    def __init__(self, bids: list, asks: list, mark: float, cap: float) -> None:
        self.bids, self.asks = bids, asks
        self.bi = self.ai = 0
        self.brem = bids[0][1] if bids else 0.0
        self.arem = asks[0][1] if asks else 0.0
        self.lo, self.hi = mark * (1 - cap), mark * (1 + cap)

    def take_to(self, price: float) -> float:
        """The shock: remove the levels better than ``price``; returns the notional removed."""
        eaten = 0.0
        while self.bi < len(self.bids) and self.bids[self.bi][0] > price:
            eaten += self.bids[self.bi][0] * self.brem
            self._next_bid()
        while self.ai < len(self.asks) and self.asks[self.ai][0] < price:
            eaten += self.asks[self.ai][0] * self.arem
            self._next_ask()
        return eaten

    def sell(self, qty: float, price: float) -> tuple[float, float, bool]:
        """Walk the bids with ``qty``: (new price, notional consumed, exhausted)."""
        consumed, last = 0.0, price
        while qty > 1e-12:
            if self.bi >= len(self.bids):
                return min(price, self.lo), consumed, True
            p = self.bids[self.bi][0]
            take = min(qty, self.brem)
            consumed += take * p
            qty -= take
            self.brem -= take
            last = p
            if self.brem <= 1e-12:
                self._next_bid()
        return min(price, last), consumed, False

    def buy(self, qty: float, price: float) -> tuple[float, float, bool]:
        consumed, last = 0.0, price
        while qty > 1e-12:
            if self.ai >= len(self.asks):
                return max(price, self.hi), consumed, True
            p = self.asks[self.ai][0]
            take = min(qty, self.arem)
            consumed += take * p
            qty -= take
            self.arem -= take
            last = p
            if self.arem <= 1e-12:
                self._next_ask()
        return max(price, last), consumed, False

    def _next_bid(self) -> None:
        self.bi += 1
        self.brem = self.bids[self.bi][1] if self.bi < len(self.bids) else 0.0

    def _next_ask(self) -> None:
        self.ai += 1
        self.arem = self.asks[self.ai][1] if self.ai < len(self.asks) else 0.0


def _requirement(snap: Snapshot, positions: list[Position], prices: dict[str, float]) -> float:
    """Maintenance margin plus the fee on the close, at ``prices``."""
    total = 0.0
    for p in positions:
        n = abs(p.size) * prices[p.symbol]
        total += n * (maintenance_rate(n, snap.tiers_of(p.symbol)) + snap.fee)
    return total


def _equity(snap: Snapshot, account: str, positions: list[Position], prices: dict[str, float]) -> float:
    return snap.equity[account] + sum(p.size * (prices[p.symbol] - snap.marks[p.symbol]) for p in positions)


def run(snap: Snapshot, symbol: str, shock: float, max_rounds: int = MAX_ROUNDS) -> Path:
    """The path after moving ``symbol``'s price by ``shock`` (see the module docstring)."""
    if symbol not in snap.marks:
        raise KeyError(f"no mark and reliable book for {symbol!r}")
    prices = dict(snap.marks)
    books = {s: _Book(*snap.books.get(s, ([], [])), snap.marks[s], snap.cap) for s in snap.marks}
    # isolated (and cross without a known equity): their own liquidation price
    liq: dict[str, list[tuple[float, Position]]] = {}
    already = 0
    for s, held in snap.by_symbol.items():
        rows = []
        for p in held:
            if not p.isolated and p.account in snap.equity:
                continue
            lp = liquidation_price(p.size, p.entry, p.leverage, tiers=snap.tiers_of(s), fee=snap.fee)
            if lp is None:
                continue
            if (p.size > 0 and snap.marks[s] <= lp) or (p.size < 0 and snap.marks[s] >= lp):
                already += 1
                continue
            rows.append((lp, p))
        liq[s] = rows
    alive_cross = {}
    for acct, held in snap.cross.items():
        if _equity(snap, acct, held, prices) <= _requirement(snap, held, prices):
            already += 1
        else:
            alive_cross[acct] = held
    cross_on: dict[str, set[str]] = {}
    for acct, held in alive_cross.items():
        for p in held:
            cross_on.setdefault(p.symbol, set()).add(acct)

    target = snap.marks[symbol] * (1 + shock)
    target = min(max(target, books[symbol].lo), books[symbol].hi)
    books[symbol].take_to(target)  # what the shock itself sold into (not counted as forced flow)
    prices[symbol] = target
    changed = {symbol}
    done: set[Position] = set()
    rounds: list[list[Round]] = []
    exhausted: set[str] = set()
    total_n = total_depth = 0.0
    total_accounts: set[str] = set()
    for _ in range(max_rounds):
        flow: dict[str, list] = {}  # symbol -> [qty sold (net), notional, accounts, cross accounts]
        for s in sorted(changed):
            px = prices[s]
            for lp, p in liq.get(s, ()):
                if p in done or not ((p.size > 0 and px <= lp) or (p.size < 0 and px >= lp)):
                    continue
                done.add(p)
                f = flow.setdefault(s, [0.0, 0.0, set(), set()])
                f[0] += p.size
                f[1] += abs(p.size) * snap.marks[s]
                f[2].add(p.account)
        failing = sorted({a for s in changed for a in cross_on.get(s, ())})
        for acct in failing:
            held = alive_cross.get(acct)
            if held is None or _equity(snap, acct, held, prices) > _requirement(snap, held, prices):
                continue
            del alive_cross[acct]
            for p in held:  # the venue closes every cross position of the account
                done.add(p)
                f = flow.setdefault(p.symbol, [0.0, 0.0, set(), set()])
                f[0] += p.size
                f[1] += abs(p.size) * snap.marks[p.symbol]
                f[2].add(acct)
                f[3].add(acct)
        if not flow:
            break
        rnd, changed = [], set()
        for s in sorted(flow):
            qty, notional, accts, cross = flow[s]
            before = prices[s]
            book = books[s]
            if qty > 0:
                after, consumed, out = book.sell(qty, before)
            elif qty < 0:
                after, consumed, out = book.buy(-qty, before)
            else:
                after, consumed, out = before, 0.0, False
            if out:
                exhausted.add(s)
            if after != before:
                changed.add(s)
            prices[s] = after
            rnd.append(Round(s, before, after, notional, len(accts), len(cross), consumed, out, qty > 0))
            total_n += notional
            total_depth += consumed
            total_accounts |= accts
        rounds.append(rnd)
        if not changed:
            break
    moves = {s: prices[s] / snap.marks[s] - 1 for s in sorted(prices) if prices[s] != snap.marks[s]}
    return Path(symbol, shock, rounds, total_n, len(total_accounts), total_depth, moves, sorted(exhausted), already)


def critical_shock(snap: Snapshot, symbol: str, ladder: tuple[float, ...] = LADDER,
                   amplification: float = 2.0) -> tuple[float, Path] | None:
    """The smallest shock of the ladder (either way) after which the chain sustains itself,
    with its path; None if none does (within the ladder and the cap)."""
    for size in sorted(ladder):
        for shock in (-size, size):
            path = run(snap, symbol, shock)
            if path.sustains(amplification):
                return shock, path
    return None
