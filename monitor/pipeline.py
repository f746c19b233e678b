"""The pure pipeline: events -> state -> detectors -> anomalies, on event time.

No I/O and no asyncio: the daemon, ``replay`` and the tests all drive this same object,
which is why a recorded hour replays in seconds and gives the same anomalies.

>>> from detectors import build_detectors
>>> from monitor.events import Book
>>> p = Pipeline(MarketState(), build_detectors({}), tick_ms=250)
>>> p.process([Book(symbol="X", ts=1_732_400_000_000, seq=1, snapshot=True),
...            Book(symbol="X", ts=1_732_400_000_100, seq=3),
...            Book(symbol="X", ts=1_732_400_000_300, seq=4)])[0].kind
'feed_gap'
"""

from __future__ import annotations

import gc
from collections import Counter
from typing import Any, Callable, Iterable

from alerts.correlate import Correlator, Incident
import msgspec

from detectors import REGISTRY, build_detectors
from detectors.base import Detector, build_config
from monitor.codecs import Codec, recorded
from monitor.config import Config, ConfigError, structure_errors
from monitor.config import parse as parse_config
from monitor.events import EVENT_TYPES, Anomaly, Event
from monitor.state import EventClock, ExposureGraph, MarketState
from monitor.state.coverage import Coverage


def tune_gc() -> None:
    """Collect young garbage less often: the heap holds millions of long-lived state objects
    (accounts, positions, levels) and each default young collection walks the new ones.
    Measured on benchmarks/ingest.py (50 symbols, 100k accounts): 177k -> 215k events/s."""
    gc.collect()
    gc.freeze()  # start-up objects never need scanning again
    gc.set_threshold(50_000, 20, 100)


class Pipeline:
    """Applies events to state, routes them to detectors and runs event-time ticks.

    Event time is guarded (``EventClock``): an event more than ``max_ahead_ms`` ahead of the
    stream's recent event time is refused before the state or any detector sees it and
    counted in ``refused_future`` (a run of ``resync_after`` of them in a row moves the
    clock: the stream really jumped). When a live stream stalls the shell calls
    ``advance_to(wall_ms)`` so ticks (and the detectors that speak on them) go on; live it
    may also call ``set_wall(wall_ms)`` so nothing beyond wall time + ``max_ahead_ms`` is
    accepted. Events older than the clock (a lagging source) are applied but never move
    time back or re-run past ticks.
    """

    def __init__(self, state: MarketState, detectors: list[Detector], tick_ms: int = 250,
                 max_ahead_ms: int | None = 300_000, resync_after: int = 256,
                 correlator: Correlator | None = None) -> None:
        self.state = state
        self.detectors = detectors
        self.correlator = correlator
        self._changed: dict[str, Incident] = {}  # incidents changed since take_incidents(), latest state
        self.clock = EventClock(tick_ms, max_ahead_ms=max_ahead_ms, resync_after=resync_after)
        # The sources' codecs, watched for what they cannot give (monitor.state.coverage). Not
        # checkpointed: the codecs are the shell's; it watches them again after a restart.
        self.coverage = Coverage()
        self.type_counts: dict[type, int] = dict.fromkeys(EVENT_TYPES, 0)
        self.refused = 0
        # Decided once: per event type, the state update and the detectors that see it.
        self._table: dict[type, tuple] = {
            t: (state.handler(t), tuple(d.on_event for d in detectors if t in d.consumes)) for t in EVENT_TYPES
        }

    @property
    def counts(self) -> Counter[str]:
        """Events applied so far, by type name."""
        return Counter({t.__name__: n for t, n in self.type_counts.items() if n})

    @property
    def refused_future(self) -> int:
        """Events refused for a timestamp too far ahead of event time (or of wall time)."""
        return self.clock.refused_future

    def process(self, events: list[Event]) -> list[Anomaly]:
        """Feed a batch of events (one frame); return the anomalies raised by its ticks."""
        state, table, clock, counts = self.state, self._table, self.clock, self.type_counts
        out: list[Anomaly] = []
        limit = clock.limit
        for ev in events:
            t = type(ev)
            counts[t] += 1
            if ev.ts > limit and not clock.admit(ev.ts, sum(counts.values())):
                continue  # too far ahead: refused (counted by the clock), applied nowhere
            update, handlers = table[t]
            if not update(ev):
                self.refused += 1
                continue
            for handler in handlers:
                handler(ev, state)
            if ev.ts >= clock.next_tick:  # cheap test first: most events fall between ticks
                for now in clock.advance(ev.ts):
                    out.extend(self.tick(now))
                limit = clock.limit
        return out

    def advance_to(self, now_ms: int) -> list[Anomaly]:
        """Run the ticks up to ``now_ms`` without an event (the shell's wall time when a live
        stream has stalled). The same ticks an event at ``now_ms`` would run; events stamped
        before ``now_ms`` arriving later are applied but never re-run a past tick."""
        out: list[Anomaly] = []
        for now in self.clock.advance(now_ms):
            out.extend(self.tick(now))
        return out

    def set_wall(self, wall_ms: int) -> None:
        """Live only: refuse events beyond ``wall_ms + max_ahead_ms`` (the first ones included)."""
        self.clock.set_wall(wall_ms)

    def feed(self, events: list[Event]) -> list[Anomaly]:
        """One frame, as the daemon and ``replay`` both take it: process the events, emit what
        detectors decided on them, and correlate the lot into incidents. Same frames, same
        anomalies, same incidents, whoever drives it."""
        found = self.process(events)
        found += self.flush()
        return self.correlate(found) if found else found

    def correlate(self, anomalies: list[Anomaly]) -> list[Anomaly]:
        """Place anomalies in incidents (event time, the state as it is now); returns them
        with any anomaly the escalation rules synthesized (``cascade_risk``) after its cause."""
        c = self.correlator
        if c is None or not anomalies:
            return anomalies
        out: list[Anomaly] = []
        for a in anomalies:
            out.append(a)
            inc, synthesized = c.add(a, self.state)
            self._changed[inc.id] = inc
            out.extend(synthesized)
        self._take_closed()
        return out

    def take_incidents(self) -> list[Incident]:
        """Incidents opened, changed, resolved or merged since the last call (latest state).
        Bounded: at most the open incidents plus the correlator's closed queue."""
        out = list(self._changed.values())
        self._changed = {}
        return out

    def _take_closed(self) -> None:
        for inc in self.correlator.take_closed():
            self._changed[inc.id] = inc

    def tick(self, now: int) -> list[Anomaly]:
        self.state.tick(now)
        if self.correlator is not None and self.correlator.open:
            self.correlator.resolve(now)  # quiet incidents close on event time
            self._take_closed()
        out: list[Anomaly] = []
        for d in self.detectors:
            found = d.on_tick(now, self.state)
            if found:
                out.extend(found)
        if self.coverage.watched:
            out.extend(self.coverage.on_tick(now, self.state))
        return out

    def flush(self) -> list[Anomaly]:
        """Collect anomalies detectors have decided but not yet emitted (quiet feed, shutdown)."""
        out: list[Anomaly] = []
        for d in self.detectors:
            out.extend(d.flush(self.state))
        return out

    def run_frames(self, frames: Iterable[bytes | str], codec: Codec,
                   on_batch: Callable[[list[Anomaly]], None] | None = None, batch: int = 1000) -> list[Anomaly]:
        """Decode and process recorded frames to the end (flushing at the end).

        With ``on_batch`` the anomalies are handed over in batches (and not returned), so
        a long replay holds at most ``batch`` of them.
        """
        return self._collect((self.feed(codec.decode(frame)) for frame in frames), on_batch, batch)

    def run_items(self, items: Iterable[recorded.Item], codec_of: Callable[[str], Codec],
                  on_batch: Callable[[list[Anomaly]], None] | None = None, batch: int = 1000) -> list[Anomaly]:
        """A recorded session (``monitor.codecs.recorded``) to the end, as the daemon ran it:
        each frame decoded by its source's codec (``codec_of(source)``), each REST snapshot
        handed to that codec, each stall advance run as the same ticks, and the pipeline fed
        only when a payload gave events (the daemon's rule). ``on_batch`` as in run_frames."""
        decode = recorded.decode

        def found():
            for source, payload, _ in items:
                if type(payload) is recorded.Advance:
                    yield self.correlate(self.advance_to(payload.ts))
                elif events := decode(codec_of(source), payload):
                    yield self.feed(events)

        return self._collect(found(), on_batch, batch)

    def _collect(self, found: Iterable[list[Anomaly]], on_batch: Callable[[list[Anomaly]], None] | None,
                 batch: int) -> list[Anomaly]:
        """The anomalies of a run to its end (the final flush included): returned, or handed
        to ``on_batch`` at least ``batch`` at a time (then [] is returned)."""
        kept: list[Anomaly] = []
        for anomalies in found:
            if anomalies:
                kept.extend(anomalies)
                if on_batch is not None and len(kept) >= batch:
                    on_batch(kept)
                    kept = []
        kept.extend(self.correlate(self.flush()))
        if on_batch is not None:
            on_batch(kept)
            return []
        return kept

    def checkpoint(self) -> dict:
        """Everything needed to resume warm (picklable)."""
        return {"state": self.state, "detectors": self.detectors, "clock": self.clock,
                "correlator": self.correlator}

    @classmethod
    def restore(cls, snap: dict) -> Pipeline:
        p = cls(snap["state"], snap["detectors"], snap["clock"].tick_ms, correlator=snap.get("correlator"))
        p.clock = snap["clock"]
        return p


# Every kind an anomaly can have: the detectors' (each declares its ``kinds``), the correlator's
# cascade_risk, the daemon's stale-feed check and the pipeline's coverage watch.
ANOMALY_KINDS: tuple[str, ...] = tuple(sorted({*(k for cls in REGISTRY.values() for k in cls.kinds()),
                                               "cascade_risk", "feed_stale", "coverage"}))


def unknown_kind(kind: str) -> str | None:
    """Why ``kind`` is not an anomaly kind (None: it is one)."""
    if kind in ANOMALY_KINDS:
        return None
    return f"unknown anomaly kind {kind!r} (known: {', '.join(ANOMALY_KINDS)})"


def detector_problems(sections: dict[str, Any], tick_ms: int | None) -> list[ConfigError]:
    """Every problem of the ``[detectors.*]`` sections: unknown sections and keys, wrong
    values (enums with their allowed values), negative numbers (no threshold, window,
    count or bound of a detector means anything below zero), ``fading`` outside (0, 1],
    and ``tick_ms`` that disagrees with ``[daemon] tick`` (checked generically here:
    detectors sit above the config in the layering)."""
    errs: list[ConfigError] = []
    for name in sorted(set(sections) - set(REGISTRY)):
        errs.append(ConfigError(f"detectors.{name}", f"unknown detector (known: {', '.join(sorted(REGISTRY))})"))
    for name, cls in REGISTRY.items():
        section = sections.get(name, {})
        key = f"detectors.{name}"
        found = structure_errors(section, cls.Config, key)
        if found:
            errs += found
            continue
        try:
            dcfg = build_config(cls, section)
        except ValueError as e:  # a rule of the detector's own (DetectorConfigError carries the key)
            errs.append(ConfigError(getattr(e, "key", key), getattr(e, "message", str(e))))
            continue
        for f in msgspec.structs.fields(dcfg):
            value = getattr(dcfg, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if "fading" in f.name and not 0 < value <= 1:
                errs.append(ConfigError(f"{key}.{f.encode_name}", f"must be within (0, 1], got {value}"))
            elif value < 0:
                errs.append(ConfigError(f"{key}.{f.encode_name}", f"must be >= 0, got {value}"))
            elif f.name == "tick_ms" and tick_ms is not None and value != tick_ms:
                errs.append(ConfigError(f"{key}.tick_ms", f"must match [daemon] tick ({tick_ms} ms), got {value}"))
    return errs


def config_problems(cfg: Config) -> list[ConfigError]:
    """What the config module cannot check itself: the detector sections, and anomaly
    kinds named in routes."""
    errs = detector_problems(cfg.detectors, cfg.daemon.tick.ms)
    for i, rt in enumerate(cfg.alerts.routes):
        for j, kind in enumerate(rt.kinds):
            why = unknown_kind(kind)
            if why:
                errs.append(ConfigError(f"alerts.routes[{i}].kinds[{j}]", why))
    return errs


def validated_detectors(cfg: Config) -> list[Detector]:
    """The ``[detectors.*]`` sections built, or a ConfigError naming the key (detectors sit
    above the config in the layering, so the config module does not check them itself)."""
    errs = detector_problems(cfg.detectors, cfg.daemon.tick.ms)
    if errs:
        raise ConfigError.of(errs)
    try:
        return build_detectors(cfg.detectors)
    except ValueError as e:  # DetectorConfigError carries the dotted key
        raise ConfigError(getattr(e, "key", "detectors"), getattr(e, "message", str(e))) from None


def load_config(path) -> Config:
    """A config file parsed, validated and its detector sections checked; a ConfigError
    carries every problem found (the detector sections' too when the rest is broken)."""
    from pathlib import Path

    from monitor.config import load

    try:
        cfg = load(path)
    except ConfigError as e:
        errs = list(e.errors)
        if e.key:  # the file was read and decoded: check its detector sections all the same
            try:
                raw = msgspec.toml.decode(Path(path).read_bytes())
                sections = raw.get("detectors", {})
                if isinstance(sections, dict):
                    errs += detector_problems(sections, None)
            except (OSError, msgspec.DecodeError):
                pass
        raise ConfigError.of(errs) from None
    errs = config_problems(cfg)
    if errs:
        raise ConfigError.of(errs)
    return cfg


def build_pipeline(cfg: Config | None = None) -> Pipeline:
    """The pipeline a config describes: detectors, state bounds, exposure graph, correlator.
    The daemon, ``replay``, ``evaluate`` and the benchmarks all build it here; with no config,
    the one a config that sets nothing gets (every default, correlator included)."""
    if cfg is None:
        cfg = parse_config('[store]\npath = "perpwatch.db"\n')
    detectors = validated_detectors(cfg)
    x, a = cfg.alerts.exposure, cfg.alerts
    graph = ExposureGraph(max_corr_symbols=x.max_corr_symbols, **x.graph_params())
    state = MarketState(max_symbols=cfg.daemon.max_symbols, max_accounts=cfg.daemon.max_accounts, exposure=graph)
    correlator = Correlator(a.incident_window.ms, a.resolve_after.ms, a.link_window.ms, a.min_account_share,
                            a.max_incident_span.ms)
    return Pipeline(state, detectors, tick_ms=cfg.daemon.tick.ms, max_ahead_ms=cfg.daemon.max_ahead.ms,
                    correlator=correlator)
