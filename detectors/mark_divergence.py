"""mark_divergence: the mark leaving the index, or the last price pushed away from the mark.

Features per symbol, computed at the first tick after a ``mark`` or ``trade`` event:

- basis_bps = (mark - index) / index, in bps;
- last_bps = (last - mark) / mark, in bps, where last is the latest trade if it is at most
  ``last_max_age_ms`` old, else the ``last`` the venue sent with the mark (if as fresh).

Each has a two-sided baseline of its own (river EW mean/variance, std floored at
``basis_floor_bps`` / ``last_floor_bps``, anomalous values not learned). A feature crosses
when |z| >= its z threshold AND |value| >= its bps floor: a symbol that always trades at a
premium does not alarm for it, and a quiet symbol's tiny wiggle is not an event. A last
price away from the mark but not from the index is the mark's doing (the basis signal),
so the last must also sit ``last_min_bps`` from the index to count as pushed.

Severity: info when only the basis crosses (the index or mark source is moving apart);
warning when the last price crosses — a last price pushed away from the mark is how
liquidations get triggered on venues that use it; critical when it is pushed at least
``critical_bps`` or both cross with |z| >= ``z_critical``.

Re-arm per symbol: one anomaly per episode, again only on escalation (higher severity,
``escalation`` x score); a new episode after ``rearm_ms`` clear. No anomaly before the
symbol has seen ``warmup_ticks`` ticks and ``min_samples`` evaluations.

>>> from monitor.state import MarketState
>>> MarkDivergence().on_tick(1_732_400_000_250, MarketState())
[]
"""

from __future__ import annotations

from detectors.base import Detector, DetectorConfig
from detectors.baseline import Baseline
from detectors.latch import Latch
from monitor.events import Anomaly, Mark, Trade
from monitor.state import MarketState


class MarkDivergenceConfig(DetectorConfig, kw_only=True):
    basis_z: float = 6.0  # |mark - index| basis vs its own baseline...
    basis_min_bps: float = 25.0  # ...and at least this far from the index
    last_z: float = 6.0  # last vs mark vs its own baseline...
    last_min_bps: float = 30.0  # ...and at least this far from the mark
    critical_bps: float = 100.0  # last pushed this far from the mark => critical
    z_critical: float = 12.0  # both crossing with |z| at least this => critical
    basis_floor_bps: float = 1.0  # std floor of the basis baseline
    last_floor_bps: float = 2.0  # std floor of the last-vs-mark baseline
    last_max_age_ms: int = 5_000  # an older last price is not compared
    warmup_ticks: int = 240  # ticks before any anomaly on a symbol
    min_samples: int = 30  # evaluations before any anomaly on a symbol
    fading: float = 0.02  # EW weight of the newest evaluation in the baselines
    readmit_ticks: int = 2_400  # evaluations anomalous in a row after which the level is learned
    rearm_ms: int = 60_000  # an episode ends after the condition is clear this long
    escalation: float = 2.0  # inside an episode, re-fire at this x the last score (or higher severity)


class _Sym:
    __slots__ = ("basis", "last", "ticks")

    def __init__(self, cfg: MarkDivergenceConfig) -> None:
        self.basis = Baseline(cfg.fading, cfg.min_samples, cfg.basis_floor_bps, cfg.readmit_ticks)
        self.last = Baseline(cfg.fading, cfg.min_samples, cfg.last_floor_bps, cfg.readmit_ticks)
        self.ticks = 0


class MarkDivergence(Detector):
    name = "mark_divergence"
    Config = MarkDivergenceConfig
    consumes = (Mark, Trade)
    check_params = [{}, {"warmup_ticks": 8, "min_samples": 4, "basis_min_bps": 1.0, "last_min_bps": 1.0,
                         "basis_z": 2.0, "last_z": 2.0, "rearm_ms": 500},
                    {"warmup_ticks": 2, "min_samples": 2, "last_max_age_ms": 100, "fading": 0.5}]

    def __init__(self, config: MarkDivergenceConfig | None = None) -> None:
        super().__init__(config)
        self._syms: dict[str, _Sym] = {}
        self._dirty: set[str] = set()
        self._latch = Latch(self.config.rearm_ms, self.config.escalation)

    def symbol_maps(self) -> dict[str, int]:
        return {"symbols": len(self._syms), "dirty": len(self._dirty)}

    def on_event(self, ev, state: MarketState) -> None:
        self._dirty.add(ev.symbol)

    def on_tick(self, now: int, state: MarketState) -> list[Anomaly]:
        for s in self._syms.values():
            s.ticks += 1
        if not self._dirty:
            return []
        dirty, self._dirty = self._dirty, set()
        out: list[Anomaly] = []
        cfg = self.config
        for symbol in sorted(dirty):
            m = state.marks.get(symbol)
            if m is None or m.mark is None or m.index is None:
                continue
            s = self._syms.get(symbol)
            if s is None:
                s = self._syms[symbol] = _Sym(cfg)
            basis = (m.mark - m.index) / m.index * 1e4
            if m.last_trade is not None and m.last_trade_ts >= now - cfg.last_max_age_ms:
                last, last_src = m.last_trade, "trade"
            elif m.last is not None and m.ts >= now - cfg.last_max_age_ms:
                last, last_src = m.last, "mark event"
            else:
                last, last_src = None, None
            z_b = s.basis.observe(basis, protect_above=cfg.basis_z)
            last_bps = z_l = None
            if last is not None:
                last_bps = (last - m.mark) / m.mark * 1e4
                z_l = s.last.observe(last_bps, protect_above=cfg.last_z)
            if s.ticks < cfg.warmup_ticks or not s.basis.ready:
                continue
            basis_x = abs(z_b) >= cfg.basis_z and abs(basis) >= cfg.basis_min_bps
            last_x = (z_l is not None and s.last.ready and abs(z_l) >= cfg.last_z
                      and abs(last_bps) >= cfg.last_min_bps
                      and abs(last - m.index) / m.index * 1e4 >= cfg.last_min_bps)
            if not (basis_x or last_x):
                continue
            if last_x:
                critical = abs(last_bps) >= cfg.critical_bps or (
                    basis_x and min(abs(z_b), abs(z_l)) >= cfg.z_critical)
                severity = "critical" if critical else "warning"
                score = abs(z_l)
            else:
                severity, score = "info", abs(z_b)
            if not self._latch.fire(symbol, now, score, severity):
                continue
            # a catch-up tick can run after a later event was applied: never stamp before the evidence
            crossed = [name for name, x in (("basis", basis_x), ("last_vs_mark", last_x)) if x]
            out.append(Anomaly.make("mark_divergence", max(now, m.ts), score, severity, symbol=symbol, detail={
                "crossed": crossed,
                "features": {"mark": m.mark, "index": m.index, "last": last, "last_source": last_src,
                             "basis_bps": round(basis, 3),
                             "last_vs_mark_bps": round(last_bps, 3) if last_bps is not None else None,
                             "last_vs_index_bps": round((last - m.index) / m.index * 1e4, 3)
                             if last is not None else None},
                "z": {"basis": round(z_b, 3), "last_vs_mark": round(z_l, 3) if z_l is not None else None},
                "baseline_bps": {"basis": s.basis.snapshot(), "last_vs_mark": s.last.snapshot()},
                "thresholds": {"basis_z": cfg.basis_z, "basis_min_bps": cfg.basis_min_bps, "last_z": cfg.last_z,
                               "last_min_bps": cfg.last_min_bps, "critical_bps": cfg.critical_bps},
                "why": "a last price pushed away from the mark can trigger liquidations where venues use it"
                       if last_x else "mark and index moving apart: a price source or the funding basis is off",
            }))
        return out
