"""The daemon: a thin asyncio shell around the pure pipeline.

    sources (one task each) --frames--> bounded queue --> processor (decode, pipeline)
        --> pending anomalies --> flusher: store (worker thread) --> sinks (alerts)

The queue is the only buffer between the network and the pipeline; when it is full the
sources stop reading, so TCP pushes back on the feed instead of memory growing.
Anomalies reach the sinks only after they are committed to the store.

SIGTERM (CONTRACT section 5): stop reading, process what was received, flush the store
and the sinks within ``daemon.drain_timeout`` (<= 10 s), exit 0.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import msgspec
import structlog

from alerts.correlate import Incident
from alerts.incidents import IncidentTable
from monitor.codecs import Codec, sample_text
from monitor.config import Config, SourceConfig, listen_address
from monitor.events import Anomaly
from monitor.held import Held
from monitor.logs import RateLimitedSamples
from monitor.ops import metrics
from monitor.ops.metrics import LAG_BUCKETS
from monitor.ops.checkpoint import Checkpointer, load_checkpoint, sink_snapshots, state_dir
from monitor.ops.jobs import Jobs
from monitor.ops.supervise import Supervisor
from monitor.ops.systemd import SdNotifier
from monitor.pipeline import Pipeline, build_pipeline, tune_gc  # noqa: F401 (build_pipeline: re-exported)
from monitor.codecs.formats import codec_for
from monitor.codecs.recorded import Advance, Watch
from monitor.sources import Recorder, SourceStatus, run_websocket
from monitor.store import Store
from monitor.venues import RestSnapshot, Session, make_session

log = structlog.get_logger("perpwatch.daemon")


class AnomalySink(Protocol):
    """Something that takes stored anomalies onward (alerts, the demo's console), with the
    incidents they changed (already stored too).

    A sink may also have ``async start()``, awaited when the daemon starts running."""

    async def handle(self, anomalies: list[Anomaly], incidents: list[Incident]) -> None: ...

    async def drain(self, deadline: float) -> None: ...


SPILL = "spill.jsonl"
MAX_ABANDONED_NOTIFIED = 1_000  # abandoned incidents (the latest) whose end is told to the sinks at start
MAX_UNSTORED_INCIDENTS = 20_000  # incident changes held while the store refuses writes
WRITE_BATCH = 5_000  # anomalies per store transaction


def recorder_for(cfg: Config, out_dir) -> Recorder:
    """A recorder (``perpwatch record``) whose header names each source's format and how
    the daemon watches its coverage, so a replay decodes and watches it the same way."""
    watch = {s.name: Watch(s.symbols, list(getattr(codec_for(s.format), "CONTINUOUS", ())), s.unsynced_after.ms,
                           s.silent_after.ms) for s in cfg.sources}
    return Recorder(out_dir, {s.name: s.format for s in cfg.sources}, watch)


class Daemon:
    IDLE_FLUSH_S = 0.5  # wall time without frames after which held anomalies are emitted

    def __init__(self, cfg: Config, *, sinks: list[AnomalySink] | None = None,
                 store: Store | None = None, pipeline: Pipeline | None = None,
                 recorder: Recorder | None = None) -> None:
        self.cfg = cfg
        self.recorder = recorder  # perpwatch record: every processed item, in order, with its receive time
        restored = None if pipeline is not None else load_checkpoint(cfg)
        self.pipeline = pipeline or (restored.pipeline if restored else None) or build_pipeline(cfg)
        self.pipeline.clock.max_ahead_ms = cfg.daemon.max_ahead.ms  # the config wins over a checkpoint's
        self._last_event_wall = time.monotonic()  # when the clock last moved with an event (stall detection)
        self._last_event_ts = self._anchor_ts = 0
        self.stall_ticks = 0  # times event time was advanced from wall time (a stalled stream)
        self.sessions: dict[str, Session] = {s.name: make_session(s) for s in cfg.sources}
        self.codecs: dict[str, Codec] = {name: s.codec for name, s in self.sessions.items()}
        for s in cfg.sources:  # subscribed: the config's symbols and the venue's continuous streams
            self.pipeline.coverage.watch(s.name, self.codecs[s.name], s.symbols,
                                         getattr(self.codecs[s.name], "CONTINUOUS", ()),
                                         unsynced_after_ms=s.unsynced_after.ms, silent_after_ms=s.silent_after.ms)
        self.status = {s.name: SourceStatus(s.name) for s in cfg.sources}
        self.store = store or Store(cfg.store.path)
        self.sinks = list(sinks or [])
        if cfg.alerts.receivers:
            from alerts.engine import AlertEngine

            c = self.pipeline.correlator  # a restored pipeline's open incidents: the engine routes them on
            engine = AlertEngine(cfg, open_incidents=list(c.open.values()) if c is not None else [])
            if restored is not None and "AlertEngine" in restored.sinks:
                engine.restore(restored.sinks["AlertEngine"])
            self.sinks.append(engine)
        self.anomalies_total = 0
        self.anomaly_kinds: Counter[str] = Counter()
        self.loop_lag_s = 0.0
        self.lag_buckets = [0] * (len(LAG_BUCKETS) + 1)  # event lag histogram, one sample per frame
        self.lag_sum = 0.0
        self.frames_ahead = 0  # frames whose last event was stamped ahead of wall time (not in the lag histogram)
        self.ahead_max_s = 0.0  # the furthest ahead such a frame was
        self.notifier = SdNotifier()
        self._metrics = None
        self.started_wall = time.time()
        self._queue: asyncio.Queue[tuple[str, bytes | str | RestSnapshot, int]] | None = None
        self._pending: list[Anomaly] = []  # raised since the last flush (moved to held there)
        self.incidents = IncidentTable(self.store.path)
        self._incidents: dict[str, Incident] = {}  # changed, not yet stored (latest state per id)
        self.incidents_dropped = 0  # changes dropped at MAX_UNSTORED_INCIDENTS while the store failed
        self.checkpointer = Checkpointer(cfg)
        self.frames_unprocessed = 0  # frames still queued when the stop's budget ran out
        self.held = Held(cfg.store.max_held, state_dir(cfg) / SPILL)
        self.frames_failed: Counter[str] = Counter()  # frames whose handling raised, by source
        self.supervisor = Supervisor(per_minute=1)  # failed iterations of supervised tasks, by task
        self._stop = asyncio.Event()
        self._draining = asyncio.Event()
        self._wake_flusher = asyncio.Event()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="perpwatch-store")
        self._samples = RateLimitedSamples(per_minute=5)

    # -- lifecycle ---------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    async def run(self, install_signals: bool = True) -> int:
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
        tune_gc()
        try:
            abandoned = await loop.run_in_executor(self._writer, self._abandon_dead_incidents)
        except Exception as e:  # a failing store: the next start settles it
            self.supervisor.failed("abandon_incidents", e)
            abandoned = []
        for sink in self.sinks:
            start = getattr(sink, "start", None)
            if start is not None:
                await start()
            if abandoned:
                try:
                    await sink.handle([], abandoned)
                except Exception as e:
                    self.supervisor.failed(f"sink:{type(sink).__name__}", e)
        self._queue = asyncio.Queue(maxsize=self.cfg.daemon.queue_frames)
        if self.cfg.metrics.enabled:
            host, port = listen_address(self.cfg)
            self._metrics = await asyncio.to_thread(metrics.serve, self, host, port)
        sup = self.supervisor.run
        sources = [asyncio.create_task(sup(f"source:{s.name}", lambda s=s: self._source(s)), name=f"source:{s.name}")
                   for s in self.cfg.sources]
        processor = asyncio.create_task(sup("processor", self._process_forever), name="processor")
        flusher = asyncio.create_task(sup("flusher", self._flush_forever), name="flusher")
        heartbeat = asyncio.create_task(sup("heartbeat", self._heartbeat_forever), name="heartbeat")
        jobs = Jobs(self)
        jobs.start()
        self.notifier.notify(READY=1, STATUS=self.summary())  # store open, sources connecting
        log.info("daemon_started", sources=[s.name for s in self.cfg.sources], store=str(self.store.path),
                 detectors=[d.name for d in self.pipeline.detectors])
        stopper = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([stopper, processor, flusher, *sources], return_when=asyncio.FIRST_COMPLETED)
        crashed = [t for t in done if t is not stopper and not t.cancelled() and t.exception() is not None]
        for t in crashed:
            log.error("task_failed", task=t.get_name(), error=repr(t.exception()))
        deadline = loop.time() + self.cfg.daemon.drain_timeout.seconds
        self.notifier.notify(STOPPING=1, STATUS="draining")
        heartbeat.cancel()
        jobs.stop()
        if self._metrics is not None:  # before the sinks close their databases
            await asyncio.to_thread(self._metrics.shutdown)
            self._metrics.server_close()
        await self._drain(sources, processor, flusher, deadline)
        await self._checkpoint_before(deadline)
        self.notifier.close()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        return 1 if crashed else 0

    async def _drain(self, sources, processor, flusher, deadline: float) -> None:
        """Every step is bounded by what is left of ``deadline``, so SIGTERM keeps its promise
        whatever the load: frames still queued when half the budget is spent are counted and
        logged, not processed; a store that does not answer in time has its held anomalies
        spilled (stored at the next start); the rest goes to the checkpoint."""
        loop = asyncio.get_running_loop()
        budget = self.cfg.daemon.drain_timeout.seconds
        log.info("draining", queued_frames=self._queue.qsize() if self._queue else 0)
        for t in sources:
            t.cancel()
        # a peer that never answers our close must not hold the stop (websockets waits for it)
        await asyncio.wait(sources, timeout=min(1.0, budget * 0.1))
        processor.cancel()  # safe: it only ever waits in queue.get() or handles one frame
        self._draining.set()  # the flusher finishes the batch in hand, then exits
        self._wake_flusher.set()
        await asyncio.wait([processor, flusher], timeout=max(0.05, deadline - budget * 0.5 - loop.time()))
        frames_until = deadline - budget * 0.5
        while self._queue is not None and not self._queue.empty():
            if loop.time() >= frames_until:
                self.frames_unprocessed = self._queue.qsize()
                log.warning("frames_unprocessed_at_stop", frames=self.frames_unprocessed,
                            note="the stop's time budget ran out (daemon.drain_timeout)")
                break
            name, frame, recv_ns = self._queue.get_nowait()
            self._handle_safely(name, frame, recv_ns)
        try:
            self._pending.extend(self.pipeline.correlate(self.pipeline.flush()))
        except Exception as e:
            self.supervisor.failed("flush", e)
        store_until = deadline - budget * 0.3
        try:
            await asyncio.wait_for(self._flush(), max(0.05, store_until - loop.time()))
        except (TimeoutError, Exception) as e:
            self.supervisor.failed("final_flush", e)
        self.held.add(self._pending)
        self._pending = []
        if self.held.queue:
            n = self.held.spill_all()
            log.warning("anomalies_spilled_at_stop", anomalies=n, path=str(self.held.spill_path),
                        lost=self.held.lost, note="stored at the next start")
        sinks_until = deadline - budget * 0.2
        for sink in self.sinks:
            try:
                await asyncio.wait_for(sink.drain(sinks_until), max(0.05, sinks_until - loop.time()))
            except TimeoutError:
                log.warning("sink_drain_timeout", sink=type(sink).__name__)
            except Exception as e:
                self.supervisor.failed(f"sink:{type(sink).__name__}", e)
        try:
            await asyncio.wait_for(self._store_incidents(), max(0.05, deadline - budget * 0.25 - loop.time()))
        except (TimeoutError, Exception) as e:
            self.supervisor.failed("final_incidents", e)

        if self.recorder is not None:
            self.recorder.close()
            log.info("recording_closed", path=str(self.recorder.path), items=self.recorder.items,
                     failed=self.recorder.failed)

        def close_all() -> None:
            self.incidents.close()
            self.store.close()

        close = loop.run_in_executor(self._writer, close_all)
        try:
            await asyncio.wait_for(close, max(0.05, deadline - budget * 0.15 - loop.time()))
        except (TimeoutError, Exception) as e:
            self.supervisor.failed("store_close", e)
        self._writer.shutdown(wait=False)
        log.info("stopped", anomalies=self.anomalies_total, events=sum(self.pipeline.counts.values()))

    # -- the pipeline ------------------------------------------------------------------
    async def _checkpoint_before(self, deadline: float) -> None:
        """Save detector state so a restart resumes warm. A forked writer does it (see
        monitor.ops.checkpoint); if it is not done by the deadline the daemon exits anyway
        and the writer, which ignores SIGTERM, finishes on its own (atomic rename)."""
        loop = asyncio.get_running_loop()
        c = self.checkpointer
        while not c.poll() and loop.time() < deadline:  # a periodic writer still running
            await asyncio.sleep(0.02)
        if c.running:
            log.warning("checkpoint_skipped", reason="the periodic checkpoint is still being written")
            return
        try:
            c.start(self.pipeline, sink_snapshots(self.sinks))
        except Exception as e:
            self.supervisor.failed("checkpoint", e)
            return
        while not c.poll() and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if c.running:
            log.warning("checkpoint_continues", pid=c.pid, note="the writer finishes after the daemon exits")

    def add_anomalies(self, anomalies: list[Anomaly]) -> None:
        """Anomalies raised outside the pipeline (jobs: feed_stale); placed in incidents like
        the pipeline's own, stored with the next flush."""
        self._pending.extend(self.pipeline.correlate(anomalies))

    def _abandon_dead_incidents(self) -> list[Incident]:
        """At start (writer thread): incidents the store has as firing that no checkpoint
        holds belonged to a process that died; close them as ``abandoned``. Returns the
        latest ``MAX_ABANDONED_NOTIFIED`` of them, rebuilt from the store with their stored
        anomalies, for the sinks: a receiver still hears how each one ended, with
        everything stored for it (its last update may never have gone out)."""
        c = self.pipeline.correlator
        keep = set(c.open) | {i.id for i in c.closed} if c is not None else set()
        dead = self.incidents.abandon_firing(
            keep, "abandoned at restart: the process holding it stopped without a checkpoint that has it")
        if not dead:
            return []
        log.warning("incidents_abandoned", count=len(dead), sample=dead[:5],
                    note="firing in the store, not in the checkpoint: closed as abandoned")
        rows = sorted(self.incidents.get_many(dead), key=lambda r: r["last_ts"])[-MAX_ABANDONED_NOTIFIED:]
        out = []
        for row in rows:
            ids = [e["anomaly_id"] for e in row["timeline"] if e.get("anomaly_id")]
            stored = [msgspec.convert(a, Anomaly) for a in self.store.by_ids(ids)]
            out.append(Incident.from_stored(row, stored))
        return out

    def summary(self) -> str:
        connected = sum(1 for s in self.status.values() if s.connected)
        return (f"{connected}/{len(self.status)} sources connected, {sum(self.pipeline.counts.values())} events, "
                f"{self.anomalies_total} anomalies")

    async def _heartbeat_forever(self, every_s: float = 0.5) -> None:
        """Measures event-loop lag; pings the systemd watchdog from the loop itself."""
        loop = asyncio.get_running_loop()
        watchdog = self.notifier.watchdog_s
        last_ping = last_status = 0.0
        while True:
            t = loop.time()
            await asyncio.sleep(every_s)
            now = loop.time()
            self.loop_lag_s = max(0.0, now - t - every_s)
            try:
                self._advance_stalled()
            except Exception as e:  # a detector bug on a wall-driven tick costs that tick
                self.supervisor.failed("stall_ticks", e)
            if watchdog is not None and now - last_ping >= min(watchdog, 5.0):
                self.notifier.notify(WATCHDOG=1)
                last_ping = now
            if now - last_status >= 10.0:
                self.notifier.notify(STATUS=self.summary())
                last_status = now

    async def _source(self, src: SourceConfig) -> None:
        queue = self._queue
        assert queue is not None

        async def sink(frame: bytes | str | RestSnapshot) -> None:
            await queue.put((src.name, frame, time.time_ns()))

        session = self.sessions[src.name]
        resync = asyncio.create_task(session.resync(sink), name=f"resync:{src.name}")
        try:
            await run_websocket(src, sink, self.status[src.name], session)
        finally:
            resync.cancel()

    async def _process_forever(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            if queue.empty():
                try:
                    name, frame, recv_ns = await asyncio.wait_for(queue.get(), self.IDLE_FLUSH_S)
                except TimeoutError:  # the feed is quiet: emit what detectors hold
                    try:
                        self._pending.extend(self.pipeline.correlate(self.pipeline.flush()))
                    except Exception as e:
                        self.supervisor.failed("detector_flush", e)
                    continue
            else:
                name, frame, recv_ns = queue.get_nowait()
                if queue.qsize() % 64 == 0:
                    await asyncio.sleep(0)  # let sources, the flusher and signals run under load
            self._handle_safely(name, frame, recv_ns)

    def _handle_safely(self, name: str, frame: bytes | str | RestSnapshot, recv_ns: int = 0) -> None:
        """One frame that makes the codec or the pipeline raise costs that frame: counted,
        logged (rate-limited) with a sample, never the processor. Recorded first (``perpwatch
        record``), so a replay meets the same frame, the failing ones included."""
        if self.recorder is not None:
            self.recorder.write(name, frame, recv_ns)
        try:
            self._handle(name, frame)
        except Exception as e:
            self.frames_failed[name] += 1
            if self._samples.allow(f"failed:{name}"):
                sample = frame if isinstance(frame, (bytes, str)) else type(frame).__name__
                log.error("frame_failed", source=name, error=f"{type(e).__name__}: {e}"[:300],
                          sample=sample_text(sample), failed_total=self.frames_failed[name])

    def _advance_stalled(self) -> None:
        """Live: a stream that stops advancing (silence, or timestamps that stopped moving)
        must not stop the tick detectors. After ``daemon.stall_after`` of wall time without
        the stream moving the clock, event time follows wall time from where the stream left
        it, one second behind (events in flight). Called from the heartbeat; replay never."""
        p = self.pipeline
        now_ts = p.clock.now
        if not now_ts:
            return
        wall = time.monotonic()
        if now_ts != self._last_event_ts:  # the stream moved the clock: a new anchor
            self._last_event_ts, self._last_event_wall, self._anchor_ts = now_ts, wall, now_ts
            return
        stalled = wall - self._last_event_wall
        if stalled < self.cfg.daemon.stall_after.seconds:
            return
        target = self._anchor_ts + int((stalled - 1.0) * 1000)
        if target > now_ts:
            if self.recorder is not None:
                self.recorder.write("", Advance(target), time.time_ns())
            found = p.correlate(p.advance_to(target))
            self.stall_ticks += 1
            self._last_event_ts = p.clock.now  # our own move, not the stream's
            if found:
                self._pending.extend(found)
                self._wake_flusher.set()

    def _handle(self, name: str, frame: bytes | str | RestSnapshot) -> None:
        if isinstance(frame, RestSnapshot):
            events = self.sessions[name].apply(frame)
        else:
            events = self.codecs[name].decode(frame)
        if events:
            self.pipeline.set_wall(int(time.time() * 1000))
            lag = time.time() - events[-1].ts / 1000
            if lag < 0:  # stamped ahead of our wall clock (theirs runs fast, or ours slow): counted apart
                self.frames_ahead += 1
                self.ahead_max_s = max(self.ahead_max_s, -lag)
                lag = 0.0
            self.lag_sum += lag
            self.lag_buckets[bisect_left(LAG_BUCKETS, lag)] += 1
            found = self.pipeline.feed(events)  # process, emit what is decided, correlate
            if found:
                self._pending.extend(found)
                self._wake_flusher.set()

    async def _flush_forever(self, every_s: float = 0.1) -> None:
        loop = asyncio.get_running_loop()
        recorder_flushed = loop.time()
        while not self._draining.is_set():
            if self.recorder is not None and loop.time() - recorder_flushed >= 1.0:
                recorder_flushed = loop.time()
                self.recorder.flush()
            try:  # woken by new anomalies (or the drain); otherwise every every_s for the drop log
                await asyncio.wait_for(self._wake_flusher.wait(), every_s)
            except TimeoutError:
                pass
            self._wake_flusher.clear()
            try:
                await self._flush()
                self._log_drops()
            except Exception as e:  # a bug, not a store fault (those are handled in _flush)
                self.supervisor.failed("flusher", e)
                await asyncio.sleep(1.0)

    async def _flush(self) -> None:
        """Held anomalies to the store (oldest first, one transaction per batch), then the
        incidents they changed, then both to the sinks: a sink only ever sees what is
        stored. A store that refuses writes keeps them held; see monitor.held."""
        if self._pending:
            batch, self._pending = self._pending, []
            self.held.add(batch)
        for inc in self.pipeline.take_incidents():
            self._incidents.pop(inc.id, None)
            self._incidents[inc.id] = inc  # re-inserted: the least recently changed first
        while len(self._incidents) > MAX_UNSTORED_INCIDENTS:
            del self._incidents[next(iter(self._incidents))]
            self.incidents_dropped += 1
        loop = asyncio.get_running_loop()
        stored: list[Anomaly] = []
        while self.held.due(loop.time()):
            batch = self.held.batch(WRITE_BATCH)
            try:
                await loop.run_in_executor(self._writer, self.store.write_anomalies, batch)
            except Exception as e:  # sqlite3.Error, OSError: full disk, locked, read-only
                delay = self.held.failed(f"{type(e).__name__}: {e}", loop.time(), time.time())
                if self.held.errors == 1 or self._samples.allow("store"):
                    log.error("store_write_failed", error=self.held.last_error, held=len(self.held.queue),
                              spilled=self.held.spilled, lost=self.held.lost, retry_in_s=round(delay, 2))
                break
            if self.held.committed(len(batch)):
                log.warning("store_recovered", held=len(self.held.queue), spilled=self.held.spilled,
                            lost=self.held.lost)
            self._stored(batch)
            stored.extend(batch)
        incidents = await self._store_incidents() if not self.held.queue else []
        if stored or incidents:
            for sink in self.sinks:
                try:
                    await sink.handle(stored, incidents)
                except Exception as e:
                    self.supervisor.failed(f"sink:{type(sink).__name__}", e)
        if self.held.healthy and not self.held.queue and self.held.has_spill():
            try:
                n = await loop.run_in_executor(self._writer, self.store.import_spill, self.held.spill_path)
            except Exception as e:
                self.held.failed(f"{type(e).__name__}: {e}", loop.time(), time.time())
                return
            self.held.unspilled += n
            log.warning("spill_imported", anomalies=n, path=str(self.held.spill_path))

    async def _store_incidents(self) -> list[Incident]:
        """Write the changed incidents (rows built here, on the loop that mutates them);
        on failure they stay for the next pass. Returns those written."""
        if not self._incidents:
            return []
        incs = list(self._incidents.values())
        seen = [(i.version, i.status) for i in incs]
        rows = IncidentTable.rows(incs)
        try:
            await asyncio.get_running_loop().run_in_executor(self._writer, self.incidents.write_rows, rows)
        except Exception as e:
            self.supervisor.failed("store_incidents", e)
            return []
        for inc, (version, status) in zip(incs, seen):
            if self._incidents.get(inc.id) is inc and (inc.version, inc.status) == (version, status):
                del self._incidents[inc.id]
        return incs

    def _stored(self, batch: list[Anomaly]) -> None:
        self.anomalies_total += len(batch)
        self.anomaly_kinds.update(a.kind for a in batch)
        for a in batch:
            log.info("anomaly", id=a.id, kind=a.kind, severity=a.severity, symbol=a.symbol,
                     account=a.account, ts=a.ts, score=a.score)

    def _log_drops(self) -> None:
        for name, codec in self.codecs.items():
            for reason, sample in codec.stats.drain_samples():
                if self._samples.allow(name):
                    log.warning("frame_dropped", source=name, reason=reason, sample=sample,
                                dropped_total=sum(codec.stats.dropped.values()))
