"""Scheduled jobs (apscheduler 3.x on the daemon's event loop): retention, checkpoints,
the stale-feed check. Each job is a small function of the daemon; failures are logged
and the job runs again at its next time.

- retention: anomalies older than ``store.retention`` (event time) and notifications
  delivered longer ago than ``store.delivered_retention`` are deleted;
- checkpoint: the pipeline (state, detectors, clock) and the alert engine's open
  incidents with their routing timers are pickled atomically to ``daemon.state_dir``
  every ``daemon.checkpoint_interval`` and on stop; a start with a checkpoint made under
  the same detector settings resumes warm, its incidents keeping their ids;
- stale feed: a source with no frame for ``stale_after`` (wall time: this one is about our
  connection, not the market) raises ``feed_stale`` once per silence.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import time
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from monitor.config import Config
from monitor.events import Anomaly
from monitor.pipeline import Pipeline

log = structlog.get_logger("perpwatch.jobs")
CHECKPOINT = "checkpoint.pickle"
FORMAT = 2  # bumped when the pickled state's shape changes (2: the exposure graph)


def state_dir(cfg: Config) -> Path:
    return Path(cfg.daemon.state_dir) if cfg.daemon.state_dir else Path(cfg.store.path).parent


def fingerprint(cfg: Config) -> str:
    """Detector settings, tick and format: a checkpoint made under others is not resumed.
    (Exposure-graph thresholds are not in it: they are re-applied to a restored graph.)"""
    key = [cfg.detectors, cfg.daemon.tick.ms, FORMAT]
    return hashlib.blake2b(msgspec.json.encode(key), digest_size=8).hexdigest()


class Restored(NamedTuple):
    pipeline: Pipeline
    sinks: dict[str, Any]  # what each sink's snapshot() returned, by sink class name


def sink_snapshots(sinks: list) -> dict[str, Any]:
    """The sinks that keep state worth resuming (the alert engine's incidents)."""
    return {type(s).__name__: s.snapshot() for s in sinks if hasattr(s, "snapshot")}


def save_checkpoint(cfg: Config, pipeline: Pipeline, sinks: dict[str, Any] | None = None) -> Path:
    path = state_dir(cfg) / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        pickle.dump({"fingerprint": fingerprint(cfg), "pipeline": pipeline.checkpoint(), "sinks": sinks or {}}, f,
                    protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: a crash leaves the old checkpoint or the new one
    return path


def load_checkpoint(cfg: Config) -> Restored | None:
    path = state_dir(cfg) / CHECKPOINT
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f:
            snap = pickle.load(f)
    except Exception as e:  # a corrupt or incompatible file: start cold, say why
        log.warning("checkpoint_unreadable", path=str(path), error=f"{type(e).__name__}: {e}"[:200])
        return None
    if snap.get("fingerprint") != fingerprint(cfg):
        log.info("checkpoint_ignored", path=str(path), reason="detector settings or checkpoint format changed")
        return None
    log.info("checkpoint_restored", path=str(path))
    pipeline = Pipeline.restore(snap["pipeline"])
    pipeline.state.exposure.configure(**cfg.alerts.exposure.graph_params())
    return Restored(pipeline, snap.get("sinks") or {})


class Jobs:
    def __init__(self, daemon) -> None:
        self.d = daemon
        cfg = daemon.cfg
        self.scheduler = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1,
                                                        "misfire_grace_time": 60})
        self.scheduler.add_job(self.retention, "interval", minutes=10, id="retention")
        self.scheduler.add_job(self.checkpoint, "interval", seconds=cfg.daemon.checkpoint_interval.seconds,
                               id="checkpoint")
        self.scheduler.add_job(self.stale_feeds, "interval", seconds=1, id="stale_feeds")
        self._stale: set[str] = set()

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.shutdown(wait=False)

    async def retention(self) -> None:
        import asyncio

        cfg = self.d.cfg
        cutoff_ms = int((time.time() - cfg.store.retention.seconds) * 1000)
        n = await asyncio.to_thread(self.d.store.purge_anomalies, cutoff_ms)
        for sink in self.d.sinks:
            outbox = getattr(sink, "outbox", None)
            if outbox is not None:
                n += await asyncio.to_thread(outbox.purge_sent, time.time() - cfg.store.delivered_retention.seconds)
        if n:
            log.info("retention_purged", rows=n)

    async def checkpoint(self) -> None:
        save_checkpoint(self.d.cfg, self.d.pipeline, sink_snapshots(self.d.sinks))

    async def stale_feeds(self) -> None:
        now = time.time()
        for src in self.d.cfg.sources:
            st = self.d.status[src.name]
            since = st.last_frame_wall or self.d.started_wall
            silent = now - since
            if silent < src.stale_after.seconds:
                self._stale.discard(src.name)
                continue
            if src.name in self._stale:
                continue
            self._stale.add(src.name)
            ts = self.d.pipeline.clock.now or int(since * 1000)
            self.d.add_anomalies([Anomaly.make(
                "feed_stale", ts, silent, "critical" if st.frames else "warning",
                detail={"source": src.name, "silent_for_s": round(silent, 1), "stale_after_s": src.stale_after.seconds,
                        "connected": st.connected, "frames_so_far": st.frames, "last_error": st.last_error,
                        "note": "wall-clock check of our feed; ts is the last event time seen"})])
