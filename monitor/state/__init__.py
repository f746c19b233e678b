"""Live market state, updated event by event: books, marks, accounts, the clock.

``MarketState.apply`` is the only writer. It is pure and synchronous; detectors read it.
The per-type dispatch table is built once, so an event costs one dict lookup and one
call before its own update.
"""

from __future__ import annotations

from typing import Callable

from monitor.events import Account, Book, Event, Heartbeat, Liquidation, Mark, Order, Position, Quote, Trade
from monitor.state.accounts import AccountBook, AccountState, Pos
from monitor.state.book import L2Book, Status
from monitor.state.clock import EventClock
from monitor.state.exposure import ExposureGraph

__all__ = ["MarketState", "SymbolMarks", "L2Book", "AccountBook", "AccountState", "Pos", "EventClock", "ExposureGraph"]


class SymbolMarks:
    """Latest mark/index/last/funding/open interest of a symbol; ``prev_mark`` is the mark
    as it stood before the latest mark's ``ts`` (what a sample at that ts should see)."""

    __slots__ = ("mark", "index", "last", "funding_rate", "open_interest", "ts", "last_trade", "last_trade_ts",
                 "prev_mark")

    def __init__(self) -> None:
        self.mark: float | None = None
        self.prev_mark: float | None = None
        self.index: float | None = None
        self.last: float | None = None
        self.funding_rate: float | None = None
        self.open_interest: float | None = None
        self.ts = 0
        self.last_trade: float | None = None
        self.last_trade_ts = 0

    def __getstate__(self):
        return tuple(getattr(self, k) for k in self.__slots__)

    def __setstate__(self, s):
        for k, v in zip(self.__slots__, s):
            setattr(self, k, v)


class MarketState:
    """Books, marks, accounts and the exposure graph between symbols, with a bound on how
    many symbols a feed may create.

    The symbol table (``marks``) holds at most ``max_symbols`` symbols, first come; it is the
    gate for every event type that names a symbol (book, order, trade, mark, position,
    liquidation): an event on a symbol beyond the table is refused here, counted in
    ``rejected_symbols``, and the pipeline then shows it to no detector. So every per-symbol
    map downstream (books, the exposure graph's, each detector's) is keyed by symbols of
    this table and holds at most ``max_symbols`` entries."""

    def __init__(self, max_symbols: int = 5_000, max_accounts: int = 2_000_000,
                 exposure: ExposureGraph | None = None) -> None:
        self.books: dict[str, L2Book] = {}
        self.marks: dict[str, SymbolMarks] = {}
        self.exposure = exposure or ExposureGraph()
        self.accounts = AccountBook(max_accounts, on_evict=self.exposure.forget_account)
        self.max_symbols = max_symbols
        self.rejected_symbols = 0  # events dropped because the symbol table was full
        # each symbol's one string object: positions key by it instead of each event's copy
        self.symbol_names: dict[str, str] = {}
        self.last_book_status: Status = "ok"
        self.last_prev_position: Pos | None = None  # what the last position event replaced
        self._apply = {
            Book: self._book, Mark: self._mark, Trade: self._trade, Position: self._position,
            Account: self._account, Order: self._order, Liquidation: self._liquidation, Heartbeat: _noop,
            Quote: self._quote,
        }

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        if "symbol_names" not in d:  # a checkpoint from before symbol_names
            self.symbol_names = {s: s for s in self.marks}

    def _quote(self, ev: Quote) -> bool:
        """The venue's best bid/ask against our book at the same update id; a disagreement is
        counted on the book (``ticker_divergences``, coverage reports it)."""
        book = self.books.get(ev.symbol)
        if book is not None and book.reliable:
            book.check_quote(ev.ts, ev.bid, ev.ask)
        return True

    def apply(self, ev: Event) -> bool:
        """Update state with one event. False when the event was refused (symbol flood)."""
        return self._apply[type(ev)](ev)

    def handler(self, t: type) -> Callable[[Event], bool]:
        """The update function for one event type (the pipeline binds these once)."""
        return self._apply[t]

    def tick(self, now: int) -> None:
        """Event-time housekeeping before the detectors score: the exposure graph's samples."""
        self.exposure.sample(now, self.marks)

    def known_symbol(self, symbol: str) -> bool:
        if symbol in self.marks:
            return True
        if len(self.marks) >= self.max_symbols:
            self.rejected_symbols += 1
            return False
        self.marks[symbol] = SymbolMarks()
        self.symbol_names[symbol] = symbol
        return True

    def symbols(self) -> list[str]:
        return list(self.marks)

    def _book(self, ev: Book) -> bool:
        book = self.books.get(ev.symbol)
        if book is None:
            if not self.known_symbol(ev.symbol):
                return False
            book = self.books[ev.symbol] = L2Book(ev.symbol)
        book.last_ts = ev.ts
        self.last_book_status = book.apply(ev.seq, ev.snapshot, ev.bids, ev.asks)
        return True

    def _marks_of(self, symbol: str) -> SymbolMarks | None:
        m = self.marks.get(symbol)
        if m is None and self.known_symbol(symbol):
            m = self.marks[symbol]
        return m

    def _mark(self, ev: Mark) -> bool:
        m = self._marks_of(ev.symbol)
        if m is None:
            return False
        if ev.ts > m.ts:
            m.prev_mark = m.mark
        m.mark = ev.mark
        m.index = ev.index
        if ev.last is not None:
            m.last = ev.last
        if ev.funding_rate is not None:
            m.funding_rate = ev.funding_rate
        if ev.open_interest is not None:
            m.open_interest = ev.open_interest
        m.ts = ev.ts
        return True

    def _trade(self, ev: Trade) -> bool:
        m = self._marks_of(ev.symbol)
        if m is None:
            return False
        m.last_trade = ev.price
        m.last_trade_ts = ev.ts
        return True

    def _position(self, ev: Position) -> bool:
        symbol = self.symbol_names.get(ev.symbol)
        if symbol is None:
            if not self.known_symbol(ev.symbol):
                return False
            symbol = ev.symbol
        st, prev = self.accounts.position(
            str(ev.account), symbol, ev.size, ev.entry_price, ev.leverage, ev.margin_mode, ev.liq_price, ev.ts)
        self.last_prev_position = prev
        self.exposure.on_position(st, symbol, prev)
        return True

    def _account(self, ev: Account) -> bool:
        self.accounts.collateral(str(ev.account), ev.equity, ev.maintenance_margin, ev.ts)
        return True

    def _order(self, ev: Order) -> bool:
        return ev.symbol in self.marks or self.known_symbol(ev.symbol)

    def _liquidation(self, ev: Liquidation) -> bool:
        if ev.symbol not in self.marks and not self.known_symbol(ev.symbol):
            return False
        self.exposure.on_liquidation(ev.symbol, ev.ts)
        return True

    def price(self, symbol: str) -> float | None:
        """Best available reference price: mark, else book mid, else last trade."""
        m = self.marks.get(symbol)
        if m is not None and m.mark is not None:
            return m.mark
        b = self.books.get(symbol)
        if b is not None and (mid := b.mid()) is not None:
            return mid
        return m.last_trade if m is not None else None


def _noop(ev: Event) -> bool:
    return True
