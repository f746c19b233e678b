"""Checks every detector must pass, whatever its parameters (river's ``checks`` habit).

``tests/test_detector_checks.py`` runs each check over every detector in ``REGISTRY`` and
every parameter set from ``params_for`` (the class's ``check_params``, else defaults plus a
small-cap set built from its config's own keys), on ``synthetic_stream``: a short seeded
market with every event type and one of each anomaly in it (a cancel burst, a leverage
jump and a cohort, a liquidation cluster near a thin book, trades pushed from the mark,
funding and volatility spiking, a sequence gap and its resync, liquidation prints).

The checks:

- ``check_tick_before_any_event``: ``on_tick`` and ``flush`` on an empty state return [];
- ``check_events_untouched``: processing neither mutates an event nor keeps a reference
  to one (reference counts return to what they were);
- ``check_deterministic``: the same stream twice gives identical anomalies;
- ``check_checkpoint_resumes``: pickled mid-stream (whole pipeline, as ``jobs`` does),
  restored and resumed, the output equals the uninterrupted run's;
- ``check_memory_bounded``: per-key maps respect their caps (``bounds()``), and the
  pickled detector does not grow with the number of distinct accounts seen;
- ``check_symbols_bounded``: a flood of distinct symbols on every event type that names
  one (``symbol_flood``) through a state with a small ``max_symbols``: the state refuses
  the excess before any detector sees it, so each per-symbol map (``symbol_maps()``) and
  every container the detector holds directly stays within ``max_symbols``.

>>> from detectors.feed_gap import FeedGap
>>> [c.__name__ for c in CHECKS][:2]
['check_tick_before_any_event', 'check_events_untouched']
>>> check_tick_before_any_event(lambda: FeedGap())
"""

from __future__ import annotations

import math
import pickle
import random
import sys
from collections import deque
from typing import Callable

import msgspec

from detectors.base import Detector
from monitor.events import Account, Book, Event, Heartbeat, Liquidation, Mark, Order, Position, Trade
from monitor.pipeline import Pipeline
from monitor.state import MarketState

T0 = 1_732_400_000_000
SMALL_CAP = 16  # per-account caps in the generated parameter sets

Make = Callable[[], Detector]


def params_for(cls: type[Detector]) -> list[dict]:
    """Parameter sets to check a detector under: its own ``check_params`` if it declares
    them, else the defaults plus a set with short warm-ups and small caps (only keys its
    config has)."""
    declared = cls.check_params
    if declared:
        return [dict(p) for p in declared]
    fields = {f.name for f in msgspec.structs.fields(cls.Config)}
    small = {k: v for k, v in {"max_accounts": SMALL_CAP, "warmup_ticks": 8, "rearm_ms": 1_000,
                               "cooldown_ms": 1_000, "stuck_after_ms": 1_000}.items() if k in fields}
    return [{}, small] if small else [{}]


def maker(cls: type[Detector], params: dict) -> Make:
    return lambda: cls(msgspec.convert(params, cls.Config))


def synthetic_stream(seed: int = 1, seconds: int = 40, n_symbols: int = 3, n_accounts: int = 300) -> list[Event]:
    """A small seeded market with every event type and one of each anomaly from ~60% in."""
    rng = random.Random(seed)
    syms = [f"S{i}-PERP" for i in range(n_symbols)]
    mids = {s: 100.0 * (i + 1) for i, s in enumerate(syms)}
    seqs = dict.fromkeys(syms, 1)
    funding = dict.fromkeys(syms, 0.0001)
    ev: list[Event] = []
    for s in syms:
        m = mids[s]
        ev.append(Book(symbol=s, ts=T0, seq=1, snapshot=True, bids=[(m * (1 - 5e-4 * k), 50.0) for k in range(1, 60)],
                       asks=[(m * (1 + 5e-4 * k), 50.0) for k in range(1, 60)]))
    levs = {}
    for i in range(n_accounts):
        a, s = f"a-{i}", syms[i % n_symbols]
        levs[a] = rng.choice((2.0, 3.0, 5.0, 10.0))
        ev.append(Account(account=a, ts=T0 + 1, equity=rng.uniform(5e3, 5e4), maintenance_margin=10.0))
        ev.append(Position(account=a, symbol=s, ts=T0 + 1, size=rng.choice((-1, 1)) * rng.uniform(1, 20),
                           entry_price=mids[s], leverage=levs[a], margin_mode=rng.choice(("cross", "isolated")),
                           liq_price=mids[s] * 0.8))
    oid = 0
    burst, push, spike, gap = (0.6, 0.7), (0.65, 0.7), (0.6, 1.0), (0.8, 0.85)
    for step in range(1, seconds * 4):
        ts = T0 + step * 250
        f = step / (seconds * 4)
        for k, s in enumerate(syms):
            vol = 8.0 if k == 2 and spike[0] <= f else 1.0
            mids[s] *= math.exp(rng.gauss(0, 5e-5 * vol))
            m = mids[s]
            seqs[s] += 1
            if k == 1 and gap[0] <= f < gap[0] + 0.01:
                seqs[s] += 1  # a lost message: the book is unreliable until the resync
            if k == 1 and gap[1] <= f < gap[1] + 0.01:
                ev.append(Book(symbol=s, ts=ts, seq=seqs[s], snapshot=True,
                               bids=[(m * (1 - 5e-4 * j), 50.0) for j in range(1, 60)],
                               asks=[(m * (1 + 5e-4 * j), 50.0) for j in range(1, 60)]))
            else:
                j = rng.randint(1, 59)
                side = rng.choice(("bids", "asks"))
                px = m * (1 - 5e-4 * j) if side == "bids" else m * (1 + 5e-4 * j)
                ev.append(Book(symbol=s, ts=ts, seq=seqs[s], **{side: [(round(px, 6), rng.uniform(20, 60))]}))
            for _ in range(2):
                oid += 1
                side = rng.choice(("buy", "sell"))
                acct = f"mm-{rng.randrange(4)}"
                px = m * (1 - 1e-4) if side == "buy" else m * (1 + 1e-4)
                ev.append(Order(symbol=s, ts=ts, order_id=oid, account=acct, action="new", side=side, price=px,
                                size=rng.uniform(0.5, 2)))
                ev.append(Order(symbol=s, ts=ts, order_id=oid, account=acct, action="cancel", side=side, price=px,
                                size=rng.uniform(0.5, 2)))
            pushed = k == 1 and push[0] <= f < push[1]
            tp = m * (0.992 if pushed else 1 + rng.gauss(0, 1e-4))
            ev.append(Trade(symbol=s, ts=ts + 1, price=tp, size=rng.uniform(0.1, 2), side=rng.choice(("buy", "sell"))))
            ev.append(Order(symbol=s, ts=ts + 1, order_id=oid, account=f"a-{rng.randrange(n_accounts)}",
                            action="fill", side="buy", price=tp, size=0.5))
            if k == 0 and burst[0] <= f < burst[1]:
                for _ in range(30):
                    oid += 1
                    for action in ("new", "cancel"):
                        ev.append(Order(symbol=s, ts=ts + 2, order_id=oid, account="spoofer", action=action,
                                        side="buy", price=m * (1 - 5e-4), size=5.0))
            if step % 4 == 0:
                if k == 2 and spike[0] <= f:
                    funding[s] = min(0.002, funding[s] + 0.0002)
                ev.append(Mark(symbol=s, ts=ts + 3, mark=m, index=m * (1 + rng.gauss(0, 2e-5)), last=m,
                               funding_rate=funding[s], open_interest=1e4 + step))
        for _ in range(2):  # position churn at usual leverage
            a = f"a-{rng.randrange(n_accounts)}"
            s = syms[int(a[2:]) % n_symbols]
            ev.append(Position(account=a, symbol=s, ts=ts + 4, size=rng.choice((-1, 1)) * rng.uniform(1, 20),
                               entry_price=mids[s], leverage=levs[a]))
        if burst[0] <= f < burst[0] + 0.01:  # a leverage jump, a cohort and a liquidation cluster
            ev.append(Position(account="a-1", symbol=syms[1], ts=ts + 5, size=400.0, entry_price=mids[syms[1]],
                               leverage=40.0))
            for i in range(20, 60):
                s = syms[2] if i < 50 else syms[1]
                ev.append(Position(account=f"a-{i}", symbol=s, ts=ts + 5, size=50.0, entry_price=mids[s],
                                   leverage=40.0, margin_mode="isolated", liq_price=mids[s] * 0.98))
        if f >= spike[0] and step % 8 == 0:
            s = syms[2]
            ev.append(Liquidation(symbol=s, ts=ts + 6, side="sell", price=mids[s], size=3.0, account="a-2"))
        if step % 40 == 0:
            ev.append(Heartbeat(ts=ts + 7))
    return ev


def run(make: Make, events: list[Event]) -> list:
    p = Pipeline(MarketState(), [make()], tick_ms=250)
    return p.process(events) + p.flush()


# -- the checks ----------------------------------------------------------------------------
def check_tick_before_any_event(make: Make, events: list[Event] | None = None) -> None:
    d, st = make(), MarketState()
    assert d.on_tick(T0, st) == [], "on_tick before any event must return []"
    assert d.flush(st) == [], "flush before any event must return []"


def check_events_untouched(make: Make, events: list[Event]) -> None:
    before = [msgspec.json.encode(e) for e in events]
    refs = [sys.getrefcount(e) for e in events]
    p = Pipeline(MarketState(), [make()], tick_ms=250)
    p.process(events)
    p.flush()
    after = [sys.getrefcount(e) for e in events]  # measured exactly as before
    for i, e in enumerate(events):
        assert msgspec.json.encode(e) == before[i], f"event {i} was mutated: {e}"
        assert after[i] == refs[i], f"a reference to event {i} was kept: {e}"


def check_deterministic(make: Make, events: list[Event]) -> None:
    assert run(make, events) == run(make, events), "same stream, different anomalies"


def check_checkpoint_resumes(make: Make, events: list[Event]) -> None:
    whole = run(make, events)
    for cut in (len(events) // 3, 2 * len(events) // 3):
        p = Pipeline(MarketState(), [make()], tick_ms=250)
        first = p.process(events[:cut])
        resumed = Pipeline.restore(pickle.loads(pickle.dumps(p.checkpoint())))
        assert first + resumed.process(events[cut:]) + resumed.flush() == whole, f"resume at {cut} differs"


def account_flood(n: int, seed: int = 2) -> list[Event]:
    """``n`` distinct accounts, each trading, ordering, cancelling and changing positions once."""
    rng = random.Random(seed)
    ev: list[Event] = [Book(symbol="S0-PERP", ts=T0, seq=1, snapshot=True,
                            bids=[(100 - k * 0.05, 10.0) for k in range(1, 40)],
                            asks=[(100 + k * 0.05, 10.0) for k in range(1, 40)])]
    for i in range(n):
        ts = T0 + 10 * i
        a = f"flood-{i}"
        ev.append(Account(account=a, ts=ts, equity=rng.uniform(1e3, 1e4), maintenance_margin=1.0))
        ev.append(Position(account=a, symbol="S0-PERP", ts=ts, size=rng.uniform(-5, 5) or 1.0, entry_price=100.0,
                           leverage=rng.choice((2.0, 20.0)), margin_mode=rng.choice(("cross", "isolated"))))
        ev.append(Order(symbol="S0-PERP", ts=ts, order_id=i, account=a, action="new", side="buy", price=99.9, size=1.0))
        ev.append(Order(symbol="S0-PERP", ts=ts, order_id=i, account=a, action="cancel", side="buy", price=99.9,
                        size=1.0))
        if i % 25 == 0:
            ev.append(Mark(symbol="S0-PERP", ts=ts, mark=100.0, index=100.0, funding_rate=0.0001))
    return ev


def check_memory_bounded(make: Make, events: list[Event]) -> None:
    sizes = []
    for n in (500, 2_000):
        p = Pipeline(MarketState(), [make()], tick_ms=250)
        p.process(account_flood(n))
        d = p.detectors[0]
        for name, (length, cap) in d.bounds().items():
            assert length <= cap, f"{name}: {length} entries over its cap {cap}"
        sizes.append(len(pickle.dumps(d)))
    cap = getattr(make().config, "max_accounts", None)
    if cap is not None and cap <= 100:
        assert sizes[1] <= 1.2 * sizes[0] + 4_096, f"state grows with accounts past the cap: {sizes}"


def symbol_flood(n: int, n_accounts: int = 5) -> list[Event]:
    """``n`` distinct symbols, each named once by every event type that carries a symbol."""
    ev: list[Event] = []
    for i in range(n):
        ts, s, a = T0 + 10 * i, f"F{i}-PERP", f"acct-{i % n_accounts}"
        ev += [Book(symbol=s, ts=ts, seq=1, snapshot=True, bids=[(99.0, 1.0)], asks=[(101.0, 1.0)]),
               Order(symbol=s, ts=ts, order_id=i, account=a, action="new", side="buy", price=99.0, size=1.0),
               Order(symbol=s, ts=ts, order_id=i, account=a, action="cancel", side="buy", price=99.0, size=1.0),
               Trade(symbol=s, ts=ts, price=100.0, size=1.0, side="sell", liquidation=i % 2 == 0),
               Mark(symbol=s, ts=ts, mark=100.0, index=100.0, funding_rate=0.0001),
               Position(account=a, symbol=s, ts=ts, size=1.0, entry_price=100.0, leverage=5.0),
               Liquidation(symbol=s, ts=ts, side="sell", price=100.0, size=1.0, account=a)]
    return ev


def check_symbols_bounded(make: Make, events: list[Event], max_symbols: int = 40, n: int = 400) -> None:
    p = Pipeline(MarketState(max_symbols=max_symbols), [make()], tick_ms=250)
    flood = symbol_flood(n)
    p.process(flood)
    p.flush()
    assert p.state.rejected_symbols == sum(1 for e in flood if int(e.symbol[1:-5]) >= max_symbols)
    d = p.detectors[0]
    for name, length in d.symbol_maps().items():
        assert length <= max_symbols, f"{name}: {length} symbols past max_symbols {max_symbols}"
    for name, value in vars(d).items():  # and nothing else the detector holds grows with symbols
        if isinstance(value, (dict, set, list, deque)):
            assert len(value) <= max_symbols, f"{name}: {len(value)} entries past max_symbols {max_symbols}"


CHECKS = [check_tick_before_any_event, check_events_untouched, check_deterministic, check_checkpoint_resumes,
          check_memory_bounded, check_symbols_bounded]
