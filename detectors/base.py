"""The detector interface, in river's manners.

A detector is built from its config struct (hyper-parameters), sees every event it
subscribes to through ``on_event`` (O(1), no scoring), and is asked ``on_tick`` at
event-time ticks, where it scores per-symbol or per-account features (score before
learn) and returns anomalies with an explanation in ``detail``.

Rules: no I/O, no wall clock, no logging; state must pickle (checkpoints); warm-up is
explicit (no anomaly before the baseline has seen enough ticks).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from monitor.config import error_path
from monitor.events import Anomaly, Event
from monitor.state import MarketState


class DetectorConfigError(ValueError):
    """A detector section is wrong; ``key`` is the dotted config path."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


class DetectorConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Keys every detector section accepts."""

    enabled: bool = True


class Detector:
    """Base class. Subclasses set ``name``, ``Config`` and ``consumes``."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[DetectorConfig]] = DetectorConfig
    consumes: ClassVar[tuple[type, ...]] = ()  # event types routed to on_event
    # parameter sets the check suite (detectors/checks.py) runs the detector under; empty:
    # its defaults plus a small-cap set built from its config's own keys
    check_params: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, config: DetectorConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def on_event(self, event: Event, state: MarketState) -> None:
        """See one event (only types in ``consumes``). Must be O(1)."""

    def symbol_maps(self) -> dict[str, int]:
        """Sizes of the per-symbol maps (name -> entries). Detectors only ever see events the
        state accepted, so each of these is bounded by the state's ``max_symbols`` (the
        check suite floods symbols and verifies it)."""
        return {}

    emits: ClassVar[tuple[str, ...]] = ()  # anomaly kinds it raises; empty: its name

    @classmethod
    def kinds(cls) -> tuple[str, ...]:
        return cls.emits or (cls.name,)

    def bounds(self) -> dict[str, tuple[int, int]]:
        """Per-key maps and their caps (name -> (entries, cap)): the check suite floods
        accounts and verifies each stays within its cap."""
        return {}

    def on_tick(self, now: int, state: MarketState) -> list[Anomaly]:
        """Score features at event time ``now``; return anomalies (may be empty)."""
        return []

    def flush(self, state: MarketState) -> list[Anomaly]:
        """Anomalies already decided (on event time) but waiting for the next tick.

        The daemon calls this when the feed goes quiet and on shutdown, so a gap in the
        last message of a stream is still reported. Content never depends on when.
        """
        return []


def build_config(cls: type[Detector], section: dict[str, Any]) -> DetectorConfig:
    """Decode a ``[detectors.<name>]`` section into the detector's typed config."""
    try:
        return msgspec.convert(section, cls.Config, strict=False)
    except msgspec.ValidationError as e:
        key, msg = error_path(str(e))
        raise DetectorConfigError(f"detectors.{cls.name}" + (f".{key}" if key else ""), msg) from None
