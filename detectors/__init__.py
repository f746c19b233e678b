"""Online detectors: pure classes fed events and event-time ticks.

``REGISTRY`` maps a detector's config name to its class; ``build_detectors`` makes the
enabled ones from the ``[detectors.*]`` config sections.
"""

from __future__ import annotations

from typing import Any

from detectors.base import Detector, DetectorConfigError, build_config
from detectors.cancel_burst import CancelBurst
from detectors.feed_gap import FeedGap
from detectors.funding_crowding import FundingCrowding
from detectors.leverage_jump import LeverageJump
from detectors.mark_divergence import MarkDivergence
from detectors.thin_book_cluster import ThinBookCluster
from detectors.whatif import WhatIf

REGISTRY: dict[str, type[Detector]] = {
    FeedGap.name: FeedGap,
    CancelBurst.name: CancelBurst,
    LeverageJump.name: LeverageJump,
    ThinBookCluster.name: ThinBookCluster,
    MarkDivergence.name: MarkDivergence,
    FundingCrowding.name: FundingCrowding,
    WhatIf.name: WhatIf,
}


def build_detectors(sections: dict[str, dict[str, Any]]) -> list[Detector]:
    """One detector per registered name, configured from its section (defaults if absent).

    A section may set ``enabled = false``. An unknown section name or key raises
    ``DetectorConfigError`` naming ``detectors.<name>.<key>``.
    """
    unknown = sorted(set(sections) - set(REGISTRY))
    if unknown:
        raise DetectorConfigError(f"detectors.{unknown[0]}", f"unknown detector (known: {', '.join(sorted(REGISTRY))})")
    out: list[Detector] = []
    for name, cls in REGISTRY.items():
        cfg = build_config(cls, sections.get(name, {}))
        if cfg.enabled:
            out.append(cls(cfg))
    return out


__all__ = ["REGISTRY", "Detector", "DetectorConfigError", "build_detectors"]
