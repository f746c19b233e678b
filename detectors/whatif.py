"""whatif: the cascade a small shock would set off, from real positions against the real books.

Every ``every_ms`` of event time (after ``warmup_ms``) the detector copies the state
(``monitor.state.whatif.Snapshot``) and, for each symbol holding positions (the
``max_symbols_per_eval`` with the most notional), walks the shock ladder up to
``threshold`` both ways (``critical_shock``): the smallest shock after which the chain
sustains itself — its forced flow eats the book to ``cap`` of the mark, or crosses more
liquidation prices (a second round) and moves the price ``amplification`` x the shock. When that critical shock is at most ``threshold``
(2% by default) and the path liquidates at least ``min_notional``, a ``cascade_risk`` fires
on the symbol with the path in its detail (``path_text`` is the line a person reads first:
``-1% on AVAX liquidates $1.0M (71 accounts), eats $404k of bids, moves -4.2%; 21 cross
accounts then sell $183k of ETH``). It is a level, not a surprise: no baseline, and a
calm market whose books absorb a 2% move stays silent.

Off by default (``enabled = true`` turns it on): on the randomized profiles it warns of
every cascade minutes ahead, but it also flags structurally fragile symbols in calm hours
(e.g. a thin book under shorts whose liquidation prices sit within 1% of the mark) that
the profiles do not label, so its calm false-alert rate is not yet within issue 13's
budget.

Severity: critical when the critical shock is at most half the threshold or the path
crosses into another symbol through shared collateral; warning otherwise. One anomaly per
episode per symbol (``rearm_ms`` clear ends it), again only at a higher severity.

CPU budget: a snapshot costs O(accounts + book levels); past ``max_positions`` positions
the evaluation is skipped and counted in ``skipped`` (the live cadence never stalls the
loop on a huge book of accounts). The margin terms (tiers, taker fee) are the
thin_book_cluster section's defaults unless set here.

>>> from monitor.state import MarketState
>>> WhatIf().on_tick(1_732_400_000_250, MarketState())
[]
"""

from __future__ import annotations

import msgspec

from detectors.base import Detector, DetectorConfig
from detectors.latch import Latch
from monitor.events import Anomaly
from monitor.state import MarketState
from monitor.state.liquidation import DEFAULT_TIERS, parse_tiers
from monitor.state.whatif import LADDER, Snapshot, critical_shock


class WhatIfConfig(DetectorConfig, kw_only=True):
    enabled: bool = False  # off by default until its calm false alerts are fixed (see the module docstring)
    every_ms: int = 30_000  # evaluate this often (event time)
    warmup_ms: int = 120_000  # no evaluation before this much event time has passed
    threshold: float = 0.02  # cascade_risk when the critical shock is at most this move
    amplification: float = 2.0  # ...or the flow moves the price this many times the shock
    cap: float = 0.20  # books read and walked to this far from the mark
    min_notional: float = 1_000_000.0  # the path must liquidate at least this
    max_positions: int = 300_000  # bigger snapshots are skipped (counted): the CPU budget
    max_symbols_per_eval: int = 50  # the symbols with the most notional, per evaluation
    rearm_ms: int = 300_000  # an episode ends after the condition has been clear this long
    taker_fee: float = 0.0005
    default_tiers: list[tuple[float, float]] = msgspec.field(
        default_factory=lambda: [(c, r) for c, r in DEFAULT_TIERS[:-1]] + [(1e18, DEFAULT_TIERS[-1][1])])

    def __post_init__(self) -> None:
        parse_tiers(self.default_tiers)
        if not 0 < self.threshold <= 0.5:
            raise ValueError("threshold must be within (0, 0.5]")
        if self.every_ms <= 0 or self.max_symbols_per_eval < 1:
            raise ValueError("every_ms and max_symbols_per_eval must be positive")


class WhatIf(Detector):
    name = "whatif"
    Config = WhatIfConfig
    consumes = ()
    emits = ("cascade_risk",)
    check_params = [{"enabled": True}, {"every_ms": 1_000, "warmup_ms": 1_000, "min_notional": 1_000.0, "threshold": 0.1,
                         "rearm_ms": 1_000},
                    {"every_ms": 500, "warmup_ms": 0, "min_notional": 1.0, "max_positions": 5,
                     "max_symbols_per_eval": 1}]

    def __init__(self, config: WhatIfConfig | None = None) -> None:
        super().__init__(config)
        self._latch = Latch(self.config.rearm_ms, 2.0)
        self._first = 0
        self._last_eval = 0
        self.evaluations = 0
        self.skipped = 0  # evaluations skipped for the CPU budget
        self._tiers = parse_tiers(self.config.default_tiers)

    def bounds(self) -> dict[str, tuple[int, int]]:
        return {"latch": (len(self._latch), self._latch.max_keys)}

    def symbol_maps(self) -> dict[str, int]:
        return {"latch": len(self._latch)}

    def on_tick(self, now: int, state: MarketState) -> list[Anomaly]:
        cfg = self.config
        if not self._first:
            self._first = now
        if now - self._first < cfg.warmup_ms or now - self._last_eval < cfg.every_ms:
            return []
        self._last_eval = now
        if sum(len(a.positions) for a in state.accounts.accounts.values()) > cfg.max_positions:
            self.skipped += 1
            return []
        self.evaluations += 1
        snap = Snapshot.of(state, default_tiers=self._tiers, fee=cfg.taker_fee, cap=cfg.cap)
        held = sorted(((sum(abs(p.size) for p in ps) * snap.marks[s], s) for s, ps in snap.by_symbol.items()),
                      reverse=True)[:cfg.max_symbols_per_eval]
        ladder = tuple(x for x in LADDER if x <= cfg.threshold) or (cfg.threshold,)
        out: list[Anomaly] = []
        for _, symbol in sorted(held, key=lambda x: x[1]):
            found = critical_shock(snap, symbol, ladder, cfg.amplification)
            if found is None:
                continue
            shock, path = found
            if path.liquidated_notional < cfg.min_notional:
                continue
            spreads = len(path.by_symbol()) > 1
            severity = "critical" if abs(shock) <= cfg.threshold / 2 or spreads else "warning"
            score = round(cfg.threshold / abs(shock), 3)
            if not self._latch.fire(symbol, now, score, severity):
                continue
            out.append(Anomaly.make("cascade_risk", now, score, severity, symbol=symbol, detail={
                "rule": "what-if: a small shock sets off a self-sustaining cascade",
                "critical_shock": shock,
                "path_text": path.text(),
                "liquidated_notional": round(path.liquidated_notional, 2),
                "accounts": path.accounts,
                "depth_consumed": round(path.depth_consumed, 2),
                "moves": {s: round(m, 6) for s, m in path.moves.items()},
                "exhausted": path.exhausted,
                "rounds": len(path.rounds),
                "path": {s: {k: (round(v, 2) if isinstance(v, float) else v) for k, v in t.items()}
                         for s, t in path.by_symbol().items()},
                "symbols": sorted(path.by_symbol()),
                "ladder": list(ladder),
                "thresholds": {"threshold": cfg.threshold, "amplification": cfg.amplification,
                               "min_notional": cfg.min_notional, "cap": cfg.cap},
                "crossed": "the critical shock (the smallest move after which the forced flow sustains itself) "
                           "is within the threshold",
            }))
        return out
