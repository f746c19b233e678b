"""Scheduled jobs (apscheduler 3.x on the daemon's event loop): retention, checkpoints,
the stale-feed check. Each job is a small function of the daemon; failures are logged
and the job runs again at its next time.

- retention: anomalies older than ``store.retention`` (event time) and notifications
  delivered longer ago than ``store.delivered_retention`` are deleted;
- checkpoint: the pipeline (state, detectors, clock) and the alert engine's open
  incidents with their routing timers are written by a forked child (monitor.ops.checkpoint:
  signed, atomic, off the event loop) to ``daemon.state_dir`` every
  ``daemon.checkpoint_interval`` and on stop; a start with a checkpoint made under the
  same detector settings resumes warm, its incidents keeping their ids;
- stale feed: a source with no frame for ``stale_after`` (wall time: this one is about our
  connection, not the market) raises ``feed_stale`` once per silence.
"""

from __future__ import annotations

import time

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from monitor.events import Anomaly
from monitor.ops.checkpoint import (CHECKPOINT, Restored, fingerprint, load_checkpoint,  # noqa: F401 (re-exported)
                                    save_checkpoint, sink_snapshots, state_dir)

log = structlog.get_logger("perpwatch.jobs")


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
        self.scheduler.add_job(self.reap, "interval", seconds=1, id="checkpoint_reaper")
        self._stale: set[str] = set()

    def start(self) -> None:
        self.scheduler.start()

    def stop(self) -> None:
        self.scheduler.shutdown(wait=False)

    async def retention(self) -> None:
        try:
            await self._retention()
        except Exception as e:  # a locked or full store: the next run tries again
            self.d.supervisor.failed("retention", e)

    async def _retention(self) -> None:
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
        c = self.d.checkpointer
        try:
            started = c.start(self.d.pipeline, sink_snapshots(self.d.sinks))
        except Exception as e:  # e.g. fork refused (memory), state dir unwritable
            self.d.supervisor.failed("checkpoint", e)
            return
        if not started:
            log.warning("checkpoint_skipped", reason="the previous checkpoint is still being written",
                        skipped=c.skipped)

    async def reap(self) -> None:
        self.d.checkpointer.poll()

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
