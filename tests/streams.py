"""Small crafted event streams for detector tests (seeded, event time only)."""

from __future__ import annotations

import random

from monitor.events import Account, Book, Mark, Order, Position, Trade
from monitor.simulate.market import poisson

T0 = 1_732_400_000_000


def calm_orders(symbol: str = "BTC-PERP", seconds: int = 240, seed: int = 1, mid: float = 100.0,
                burst: tuple[int, int] | None = None, burst_x: float = 15.0, surge: tuple[int, int] | None = None,
                surge_x: float = 3.0, burst_account: str = "spoofer"):
    """L3 flow: per 50 ms, noisy news, cancels and trades; optionally a cancel burst by one
    account (``burst`` = (start s, end s)) or a benign surge where everything rises."""
    rng = random.Random(seed)
    events = [Book(symbol=symbol, ts=T0, seq=1, snapshot=True,
                   bids=[(mid - 0.01 * k, 50.0) for k in range(1, 30)],
                   asks=[(mid + 0.01 * k, 50.0) for k in range(1, 30)])]
    oid = 0
    for step in range(seconds * 20):
        ts = T0 + step * 50
        t = step / 20
        x = surge_x if surge and surge[0] <= t < surge[1] else 1.0
        for _ in range(poisson(rng, 2.0 * x)):
            oid += 1
            side = rng.choice(("buy", "sell"))
            px = mid - 0.01 * rng.randint(1, 5) if side == "buy" else mid + 0.01 * rng.randint(1, 5)
            acct = f"mm-{rng.randrange(5)}"
            size = rng.uniform(1, 5)
            events.append(Order(symbol=symbol, ts=ts, order_id=oid, account=acct, action="new", side=side,
                                price=px, size=size))
            if rng.random() < 0.9:
                events.append(Order(symbol=symbol, ts=ts, order_id=oid, account=acct, action="cancel",
                                    side=side, price=px, size=size))
        for _ in range(poisson(rng, 0.5 * x)):
            events.append(Trade(symbol=symbol, ts=ts, price=mid, size=rng.uniform(1, 4),
                                side=rng.choice(("buy", "sell"))))
        if burst and burst[0] <= t < burst[1]:
            for _ in range(poisson(rng, 2.0 * burst_x)):
                oid += 1
                side = rng.choice(("buy", "sell"))
                px = mid - 0.01 if side == "buy" else mid + 0.01
                events.append(Order(symbol=symbol, ts=ts, order_id=oid, account=burst_account, action="new",
                                    side=side, price=px, size=4.0))
                events.append(Order(symbol=symbol, ts=ts, order_id=oid, account=burst_account, action="cancel",
                                    side=side, price=px, size=4.0))
        if step % 20 == 0:
            events.append(Mark(symbol=symbol, ts=ts, mark=mid, index=mid * (1 + rng.gauss(0, 5e-5))))
    return events


__all__ = ["T0", "calm_orders", "Account", "Position", "Mark", "Book", "Trade", "Order"]
