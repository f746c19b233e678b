"""funding_crowding: an extreme funding rate while realized volatility is extreme too.

A funding rate far from its normal says positioning is one-sided (longs pay when it is
positive); realized volatility far above its normal says the market is moving enough to
force that crowd out. Either alone is common; both at once is crowding under stress.

Per symbol, at the first tick after each ``mark`` event:

- funding rate (per interval) against its own two-sided baseline (river EW mean and
  variance, std floored at ``funding_floor``), crossing at |z| >= ``funding_z`` and
  |rate| >= ``min_abs_funding``;
- realized volatility: the mark's log returns scaled to one second, r^2 averaged with a
  fast EW weight ``vol_fading`` (river ``EWMean``), its square root in bps; its log
  against a slow baseline, crossing at z >= ``vol_z``.

Severity (both must cross): info while |rate| < 2 x ``min_abs_funding``; warning above;
critical when |rate| >= ``critical_funding`` or the volatility z >= ``z_critical``.
Re-arm per symbol: one anomaly per episode, again only on escalation; a new episode
after ``rearm_ms`` clear. No anomaly before ``warmup_ticks`` ticks and ``min_samples``
marks on the symbol.

>>> from monitor.state import MarketState
>>> FundingCrowding().on_tick(1_732_400_000_250, MarketState())
[]
"""

from __future__ import annotations

import math

from river import stats

from detectors.base import Detector, DetectorConfig
from detectors.baseline import Baseline
from detectors.latch import Latch
from monitor.events import Anomaly, Mark
from monitor.state import MarketState


class FundingCrowdingConfig(DetectorConfig, kw_only=True):
    funding_z: float = 3.0  # funding rate vs its own baseline (two-sided)...
    min_abs_funding: float = 0.0003  # ...and at least this per interval (3 bps)
    funding_floor: float = 0.00002  # std floor of the funding baseline
    vol_z: float = 3.0  # log realized volatility vs its own baseline
    vol_fading: float = 0.1  # EW weight of the newest squared return (fast realized vol)
    critical_funding: float = 0.001  # |rate| at least this => critical
    z_critical: float = 6.0  # volatility z at least this => critical
    warmup_ticks: int = 240  # ticks before any anomaly on a symbol
    min_samples: int = 60  # marks before any anomaly on a symbol
    fading: float = 0.01  # EW weight of the newest mark in the baselines
    readmit_ticks: int = 2_400  # marks anomalous in a row after which the level is learned
    rearm_ms: int = 300_000  # an episode ends after the condition is clear this long
    escalation: float = 2.0  # inside an episode, re-fire at this x the last score (or higher severity)


class _Sym:
    __slots__ = ("funding", "vol", "r2", "prev", "prev_ts", "ticks", "seen_ts")

    def __init__(self, cfg: FundingCrowdingConfig) -> None:
        self.funding = Baseline(cfg.fading, cfg.min_samples, cfg.funding_floor, cfg.readmit_ticks)
        self.vol = Baseline(cfg.fading, cfg.min_samples, 0.1, cfg.readmit_ticks)
        self.r2 = stats.EWMean(fading_factor=cfg.vol_fading)
        self.prev: float | None = None
        self.prev_ts = 0
        self.ticks = 0
        self.seen_ts = 0  # the mark event time last scored


class FundingCrowding(Detector):
    name = "funding_crowding"
    Config = FundingCrowdingConfig
    consumes = (Mark,)
    check_params = [{}, {"warmup_ticks": 8, "min_samples": 4, "min_abs_funding": 0.0, "funding_z": 1.0,
                         "vol_z": 1.0, "rearm_ms": 1_000},
                    {"warmup_ticks": 2, "min_samples": 2, "vol_fading": 0.9, "fading": 0.5}]

    def __init__(self, config: FundingCrowdingConfig | None = None) -> None:
        super().__init__(config)
        self._syms: dict[str, _Sym] = {}
        self._dirty: set[str] = set()
        self._latch = Latch(self.config.rearm_ms, self.config.escalation)

    def symbol_maps(self) -> dict[str, int]:
        return {"symbols": len(self._syms), "dirty": len(self._dirty)}

    def on_event(self, ev: Mark, state: MarketState) -> None:
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
            if m is None or m.mark is None:
                continue
            s = self._syms.get(symbol)
            if s is None:
                s = self._syms[symbol] = _Sym(cfg)
            if m.ts <= s.seen_ts:
                continue
            s.seen_ts = m.ts
            prev, prev_ts = s.prev, s.prev_ts
            s.prev, s.prev_ts = m.mark, m.ts
            if prev is None or m.ts <= prev_ts:
                continue
            r = math.log(m.mark / prev) / math.sqrt((m.ts - prev_ts) / 1000.0)
            s.r2.update(r * r)
            vol_bps = math.sqrt(s.r2.get()) * 1e4
            z_v = s.vol.observe(math.log(vol_bps + 1e-6), protect_above=cfg.vol_z, one_sided=True)
            rate = m.funding_rate
            if rate is None:
                continue
            z_f = s.funding.observe(rate, protect_above=cfg.funding_z)
            if s.ticks < cfg.warmup_ticks or not (s.vol.ready and s.funding.ready):
                continue
            if z_v < cfg.vol_z or abs(z_f) < cfg.funding_z or abs(rate) < cfg.min_abs_funding:
                continue
            if abs(rate) >= cfg.critical_funding or z_v >= cfg.z_critical:
                severity = "critical"
            elif abs(rate) >= 2 * cfg.min_abs_funding:
                severity = "warning"
            else:
                severity = "info"
            score = min(abs(z_f), z_v)
            if not self._latch.fire(symbol, now, score, severity):
                continue
            # a catch-up tick can run after a later event was applied: never stamp before the evidence
            vb = s.vol.snapshot()
            out.append(Anomaly.make("funding_crowding", max(now, m.ts), score, severity, symbol=symbol, detail={
                "crowded_side": "long" if rate > 0 else "short",
                "who_pays": "longs pay shorts" if rate > 0 else "shorts pay longs",
                "features": {"funding_rate": rate, "realized_vol_bps_per_sqrt_s": round(vol_bps, 4),
                             "mark": m.mark, "open_interest": m.open_interest},
                "z": {"funding_rate": round(z_f, 3), "log_realized_vol": round(z_v, 3)},
                "baseline": {"funding_rate": s.funding.snapshot(), "log_realized_vol": vb,
                             "usual_vol_bps_per_sqrt_s": round(math.exp(vb["mean"]), 4)},
                "thresholds": {"funding_z": cfg.funding_z, "min_abs_funding": cfg.min_abs_funding,
                               "vol_z": cfg.vol_z, "critical_funding": cfg.critical_funding,
                               "z_critical": cfg.z_critical},
                "crossed": "funding rate and realized volatility both extreme against their own baselines",
            }))
        return out
