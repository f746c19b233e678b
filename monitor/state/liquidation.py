"""Liquidation prices: where a position's equity falls to its maintenance requirement.

With q = |size|, E = entry, L = leverage, m = maintenance-margin rate (from the tier of
the position's notional), f = taker fee charged on the forced close, F = funding the
position will pay at the next funding time (negative when it receives):

isolated (margin q·E/L is all it has):
    long   P = (E − E/L + F/q) / (1 − m − f)
    short  P = (E + E/L − F/q) / (1 + m + f)

cross (the account's equity Eq is shared; M is the current mark, MMo the maintenance
margin of the account's other positions, held at their current marks):
    long   P = (MMo − Eq + q·M + F) / (q·(1 − m − f))
    short  P = (Eq + q·M − F − MMo) / (q·(1 + m + f))

Tiers are looked up on the notional at the liquidation price (as venues document): the
brackets are walked from the reference price (the mark, else the entry) in the direction
of loss, solving with each bracket's rate until the solution lies inside that bracket.
With step brackets the requirement jumps up where a rising short's notional enters the
next bracket, so a short can be liquidated exactly at a bracket boundary; a falling
long's requirement only jumps down. ``None`` means the position cannot be liquidated by
price alone (e.g. a long backed by more than its notional). Funding is the whole payment due at the next funding time: venues charge it
in full to whoever holds the position at that instant, so a position that will still be
open then must survive it. The venue's own ``liq_price`` is never an input, only a
cross-check (``divergence_bps``): venues differ in brackets, fees and what collateral
counts, and a large divergence says our inputs (equity, tiers) are stale or wrong.

>>> round(liquidation_price(1.0, 100.0, 10.0, tiers=((float("inf"), 0.005),), fee=0.0), 4)  # long 10x
90.4523
>>> round(liquidation_price(-1.0, 100.0, 10.0, tiers=((float("inf"), 0.005),), fee=0.0), 4)  # short 10x
109.4527
"""

from __future__ import annotations

Tiers = tuple[tuple[float, float], ...]  # (notional up to, maintenance rate), ascending

DEFAULT_TIERS: Tiers = ((50_000.0, 0.004), (250_000.0, 0.005), (1_000_000.0, 0.01),
                        (5_000_000.0, 0.025), (float("inf"), 0.05))


def parse_tiers(rows: list[tuple[float, float]] | list[list[float]]) -> Tiers:
    """Validate config tiers ``[[notional up to, rate], ...]``; the last one covers the rest.

    >>> parse_tiers([[10_000, 0.01], [100_000, 0.02]])
    ((10000.0, 0.01), (inf, 0.02))
    """
    if not rows:
        raise ValueError("at least one tier is needed")
    out, last = [], 0.0
    for cap, rate in rows:
        cap, rate = float(cap), float(rate)
        if not 0.0 < rate < 1.0:
            raise ValueError(f"maintenance rate {rate} must be in (0, 1)")
        if cap <= last:
            raise ValueError("tier caps must increase")
        out.append((cap, rate))
        last = cap
    out[-1] = (float("inf"), out[-1][1])
    return tuple(out)


def maintenance_rate(notional: float, tiers: Tiers = DEFAULT_TIERS) -> float:
    for cap, rate in tiers:
        if notional <= cap:
            return rate
    return tiers[-1][1]


def maintenance_margin(size: float, price: float, tiers: Tiers = DEFAULT_TIERS) -> float:
    """Maintenance margin of a position of ``size`` at ``price``."""
    notional = abs(size) * price
    return notional * maintenance_rate(notional, tiers)


def divergence_bps(ours: float | None, venue: float | None) -> float | None:
    """How far the venue's liquidation price sits from ours, in bps of ours (signed).

    >>> divergence_bps(100.0, 101.0)
    100.0
    """
    if ours is None or venue is None or ours <= 0 or venue <= 0:
        return None
    return (venue - ours) / ours * 1e4


def funding_payment(size: float, mark: float, funding_rate: float | None) -> float:
    """What the position pays at the next funding (longs pay a positive rate)."""
    if not funding_rate:
        return 0.0
    return size * mark * funding_rate


def liquidation_price(size: float, entry: float, leverage: float, *, tiers: Tiers = DEFAULT_TIERS,
                      fee: float = 0.0005, funding: float = 0.0, cross_equity: float | None = None,
                      mark: float | None = None, other_mm: float = 0.0) -> float | None:
    """The price at which this position is liquidated, or None if there is none.

    ``funding`` is the payment at the next funding time (``funding_payment``). For a
    cross position pass ``cross_equity`` (the account's equity now), ``mark`` (the
    symbol's mark now) and ``other_mm`` (maintenance margin of its other positions).
    """
    if size == 0 or entry <= 0:
        return None
    q = abs(size)
    ref = q * (mark if mark is not None else entry)
    b = len(tiers) - 1
    for i in range(b):
        if ref <= tiers[i][0]:
            b = i
            break
    if size > 0:  # price falls: brackets b, b-1, ..., 0
        for i in range(b, -1, -1):
            price = _solve(True, q, entry, leverage, tiers[i][1], fee, funding, cross_equity, mark, other_mm)
            if price is None:
                return None  # lower brackets only have lower rates: no solution there either
            if i == 0 or q * price > tiers[i - 1][0]:
                return price  # inside bracket i (or above it: liquidatable already)
        return None
    price = None  # price rises: brackets b, b+1, ...
    for i in range(b, len(tiers)):
        price = _solve(False, q, entry, leverage, tiers[i][1], fee, funding, cross_equity, mark, other_mm)
        if price is None:
            return None
        if i > 0 and q * price <= tiers[i - 1][0]:
            # below this bracket: the requirement's jump at its lower boundary liquidates it
            # (for the starting bracket: liquidatable at the reference price already)
            return tiers[i - 1][0] / q
        if q * price <= tiers[i][0]:
            return price
    return price


def _solve(long: bool, q: float, entry: float, leverage: float, m: float, f: float, funding: float,
           equity: float | None, mark: float | None, other_mm: float) -> float | None:
    if equity is None:  # isolated
        if leverage <= 0:
            return None
        if long:
            p = (entry - entry / leverage + funding / q) / (1 - m - f)
        else:
            p = (entry + entry / leverage - funding / q) / (1 + m + f)
    else:
        ref = mark if mark is not None else entry
        if long:
            p = (other_mm - equity + q * ref + funding) / (q * (1 - m - f))
        else:
            p = (equity + q * ref - funding - other_mm) / (q * (1 + m + f))
    return p if p > 0 else None
