"""Prometheus metrics and ``/healthz`` on ``[metrics] listen`` (127.0.0.1:9464 by default).

Nothing on the hot path: a collector reads the daemon's existing counters when
Prometheus scrapes, so an event costs no metric call. Failing to bind is logged and the
daemon runs on without metrics.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import structlog
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, PlatformCollector, ProcessCollector,
                               generate_latest)
from monitor.logs import RateLimitedSamples
from monitor.ops.build import build_info
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.parser import text_string_to_metric_families

log = structlog.get_logger("perpwatch.metrics")
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


MAX_LOOP_LAG_S = 5.0  # an event loop this late is not keeping up (the watchdog restarts it at 30 s)


def health(d, now: float | None = None) -> tuple[bool, str]:
    """``/healthz``: ok, or each reason it is not, one per line (answered with 503):

    - the store refuses writes (anomalies are held or spilled);
    - the event loop runs more than ``MAX_LOOP_LAG_S`` late;
    - no source delivers: each has gone without a frame for longer than its
      ``stale_after`` (disconnected, refused, or connected but silent), counted from start
      for a source that never sent one.
    """
    now = time.time() if now is None else now
    reasons = []
    h = d.held
    if not h.healthy:
        reasons.append(f"store not writable since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(h.failing_since))}"
                       f": {h.last_error}; {len(h.queue)} anomalies held, {h.spilled} spilled, {h.lost} lost")
    if d.loop_lag_s > MAX_LOOP_LAG_S:
        reasons.append(f"event loop {d.loop_lag_s:.1f} s late (more than {MAX_LOOP_LAG_S:g} s): overloaded or blocked")
    failing = []
    for src in d.cfg.sources:
        st = d.status[src.name]
        silent = now - (st.last_frame_wall or d.started_wall)
        if silent <= src.stale_after.seconds:
            break  # this one delivers
        state = "connected but silent" if st.connected else "not connected"
        why = f", last error: {st.last_error[:120]}" if st.last_error and not st.connected else ""
        seen = f"no frame for {silent:.0f} s" if st.last_frame_wall else f"no frame since start ({silent:.0f} s)"
        failing.append(f"{src.name}: {state}, {seen}{why}")
    else:
        if failing:
            reasons.append("no source delivering: " + "; ".join(failing))
    if reasons:
        return False, "".join(r + "\n" for r in reasons)
    return True, "ok\n"


class DaemonCollector:
    """Reads a running Daemon's counters at scrape time."""

    def __init__(self, daemon) -> None:
        self.daemon = daemon

    def collect(self):
        d = self.daemon
        info = build_info()
        build = GaugeMetricFamily("perpwatch_build_info", "1, labelled with the running build.",
                                  labels=["version", "python"])
        build.add_metric([info["version"], info["python"]], 1.0)
        yield build
        events = CounterMetricFamily("perpwatch_events", "Events applied, by type.", labels=["type"])
        for t, n in d.pipeline.counts.items():
            events.add_metric([t], n)
        yield events
        frames = CounterMetricFamily("perpwatch_frames", "Frames received, by source.", labels=["source"])
        drops = CounterMetricFamily("perpwatch_decode_errors", "Frames/events dropped, by source and reason.",
                                    labels=["source", "reason"])
        unknown = CounterMetricFamily("perpwatch_unknown_messages", "Unknown types ignored, by source and type "
                                      "name (256 names per source, the rest as (other)).", labels=["source", "type"])
        connected = GaugeMetricFamily("perpwatch_source_connected", "1 when the source is connected.",
                                      labels=["source"])
        last = GaugeMetricFamily("perpwatch_source_last_frame_seconds", "Wall time of the last frame.",
                                 labels=["source"])
        for name, st in d.status.items():
            frames.add_metric([name], st.frames)
            connected.add_metric([name], 1.0 if st.connected else 0.0)
            last.add_metric([name], st.last_frame_wall)
            stats = d.codecs[name].stats
            for reason, n in stats.dropped.items():
                drops.add_metric([name, reason], n)
            for type_name, n in stats.unknown.items():
                unknown.add_metric([name, type_name], n)
        reconnects = CounterMetricFamily("perpwatch_source_reconnects", "Connections ended and retried, by source "
                                         "and why.", labels=["source", "reason"])
        for name, st in d.status.items():
            for reason, n in (("clean_close", st.clean_closes), ("stale", st.stale_reconnects),
                              ("oversized_frame", st.oversized), ("backoff", st.retries)):
                reconnects.add_metric([name, reason], n)
        unknown_types = CounterMetricFamily("perpwatch_unknown_message_types", "Messages the codec does not decode, "
                                            "by source and type (256 types per source, then '(other)').",
                                            labels=["source", "type"])
        unsynced = GaugeMetricFamily("perpwatch_books_unsynced", "Books waiting for a snapshot (never synced, or "
                                     "resyncing), by source.", labels=["source"])
        coverage = CounterMetricFamily("perpwatch_coverage_anomalies", "Coverage anomalies raised, by source and reason "
                                       "(book_not_synced, stream_silent, unknown_message, book_ticker_divergence).",
                                       labels=["source", "reason"])
        for name in d.status:
            codec = d.codecs[name]
            for kind, n in list(codec.stats.unknown.items()):
                unknown_types.add_metric([name, kind], n)
            waiting = getattr(codec, "unsynced", None)
            if waiting is not None:
                unsynced.add_metric([name], len(waiting()))
        for (name, reason), n in d.pipeline.coverage.raised().items():
            coverage.add_metric([name, reason], n)
        yield from (frames, drops, unknown, connected, last, reconnects, unknown_types, unsynced, coverage)
        gaps = CounterMetricFamily("perpwatch_book_gaps", "Book sequence gaps, by symbol.", labels=["symbol"])
        for sym, book in d.pipeline.state.books.items():
            if book.gaps:
                gaps.add_metric([sym], book.gaps)
        yield gaps
        kinds = CounterMetricFamily("perpwatch_anomalies", "Anomalies stored, by kind.", labels=["kind"])
        for kind, n in d.anomaly_kinds.items():
            kinds.add_metric([kind], n)
        yield kinds
        lag = GaugeMetricFamily("perpwatch_event_lag_seconds", "Wall clock minus the latest event time.")
        now_ms = d.pipeline.clock.now
        lag.add_metric([], max(0.0, time.time() - now_ms / 1000) if now_ms else 0.0)
        yield lag
        hist = HistogramMetricFamily("perpwatch_frame_event_lag_seconds",
                                     "Wall clock minus the last event time of each frame, at processing.")
        cum, buckets = 0, []
        for bound, n in zip((*LAG_BUCKETS, float("inf")), d.lag_buckets):
            cum += n
            buckets.append(("+Inf" if bound == float("inf") else str(bound), cum))
        hist.add_metric([], buckets, sum_value=d.lag_sum)
        yield hist
        ahead = CounterMetricFamily("perpwatch_frames_ahead_of_wall", "Frames whose last event was stamped ahead of "
                                    "wall time (observed as 0 in perpwatch_frame_event_lag_seconds).")
        ahead.add_metric([], d.frames_ahead)
        ahead_max = GaugeMetricFamily("perpwatch_frame_event_ahead_max_seconds",
                                      "The furthest ahead of wall time a frame's event time has been.")
        ahead_max.add_metric([], d.ahead_max_s)
        yield from (ahead, ahead_max)
        loop = GaugeMetricFamily("perpwatch_loop_lag_seconds", "How late the event loop's last heartbeat ran.")
        loop.add_metric([], d.loop_lag_s)
        yield loop
        failed = CounterMetricFamily("perpwatch_frames_failed", "Frames whose handling raised (dropped), by source.",
                                     labels=["source"])
        for name, n in d.frames_failed.items():
            failed.add_metric([name], n)
        task_errors = CounterMetricFamily("perpwatch_task_errors", "Failed iterations of supervised tasks, by task.",
                                          labels=["task"])
        for name, n in d.supervisor.errors.items():
            task_errors.add_metric([name], n)
        yield from (failed, task_errors)
        h = d.held
        writable = GaugeMetricFamily("perpwatch_store_writable", "1 while the store takes writes.")
        writable.add_metric([], 1.0 if h.healthy else 0.0)
        held = GaugeMetricFamily("perpwatch_store_held_anomalies", "Anomalies waiting for the store.")
        held.add_metric([], len(h.queue))
        errors = CounterMetricFamily("perpwatch_store_write_errors", "Store writes that failed (retried).")
        errors.add_metric([], h.errors)
        spilled = CounterMetricFamily("perpwatch_store_spilled_anomalies",
                                      "Anomalies written to the spill file (store.max_held reached, or at stop).")
        spilled.add_metric([], h.spilled)
        lost = CounterMetricFamily("perpwatch_store_lost_anomalies", "Anomalies neither stored nor spilled.")
        lost.add_metric([], h.lost)
        yield from (writable, held, errors, spilled, lost)
        c = d.checkpointer
        ck = CounterMetricFamily("perpwatch_checkpoints", "Checkpoints by result.", labels=["result"])
        for result, n in (("written", c.written), ("failed", c.failed), ("skipped", c.skipped)):
            ck.add_metric([result], n)
        yield ck
        p = d.pipeline
        refused = CounterMetricFamily("perpwatch_events_refused", "Events refused before any state or detector saw "
                                      "them, by reason.", labels=["reason"])
        refused.add_metric(["symbols_full"], p.state.rejected_symbols)  # daemon.max_symbols
        refused.add_metric(["future_ts"], p.refused_future)  # daemon.max_ahead
        yield refused
        clock = CounterMetricFamily("perpwatch_clock_moves", "Event-time moves not made by an ordinary event, by "
                                    "cause.", labels=["cause"])
        clock.add_metric(["resync"], p.clock.resyncs)  # a consistent run of future events was followed
        clock.add_metric(["stalled_stream"], d.stall_ticks)  # advanced from wall time
        yield clock
        overflow = CounterMetricFamily("perpwatch_detector_overflow", "Work a detector shed at its bound, by "
                                       "detector and what.", labels=["detector", "what"])
        for det in p.detectors:
            for attr in ("pending_dropped", "early_recomputes"):
                n = getattr(det, attr, None)
                if n is not None:
                    overflow.add_metric([det.name, attr], n)
        yield overflow
        accounts = GaugeMetricFamily("perpwatch_accounts", "Accounts held in state.")
        accounts.add_metric([], len(d.pipeline.state.accounts))
        yield accounts
        g = d.pipeline.state.exposure  # plain counters: safe to read from the scrape thread
        pairs = GaugeMetricFamily("perpwatch_exposure_tracked_pairs",
                                  "Symbol pairs the exposure graph tracks (directed), by evidence.", labels=["kind"])
        pairs.add_metric(["collateral"], g.collateral_edges)
        pairs.add_metric(["forced_flow"], len(g.flow))
        corr = GaugeMetricFamily("perpwatch_exposure_corr_symbols", "Symbols in the return-correlation matrix.")
        corr.add_metric([], len(g.slots))
        yield from (pairs, corr)
        refused = CounterMetricFamily("perpwatch_exposure_unslotted",
                                      "Samples a symbol was refused a correlation slot (max_corr_symbols).")
        refused.add_metric([], g.unslotted)
        dropped = CounterMetricFamily("perpwatch_exposure_dropped_edges",
                                      "Collateral and forced-flow edges dropped at the max_edges bound.")
        dropped.add_metric([], g.dropped_edges)
        yield from (refused, dropped)
        for sink in d.sinks:
            status = getattr(sink, "status", None)
            if status is None:
                continue
            s = status()
            sent = CounterMetricFamily("perpwatch_notifications_sent", "Notifications delivered (2xx), by receiver.",
                                       labels=["receiver"])
            failed = CounterMetricFamily("perpwatch_notifications_failed", "Delivery attempts that failed, by receiver.",
                                         labels=["receiver"])
            expired = CounterMetricFamily("perpwatch_notifications_expired",
                                          "Notifications given up at the attempt/age limit, by receiver.",
                                          labels=["receiver"])
            for receiver, c in s.get("receivers", {}).items():
                sent.add_metric([receiver], c["sent"])
                failed.add_metric([receiver], c["failed"])
                expired.add_metric([receiver], c["expired"])
            open_ = GaugeMetricFamily("perpwatch_incidents_open", "Open incidents.")
            open_.add_metric([], s["open_incidents"])
            pending = GaugeMetricFamily("perpwatch_notifications_pending", "Notifications in the outbox.")
            pending.add_metric([], s.get("pending", 0))
            age = GaugeMetricFamily("perpwatch_outbox_oldest_pending_seconds", "Age of the oldest undelivered notification.")
            age.add_metric([], s.get("oldest_pending_s", 0.0))
            yield from (sent, failed, open_, pending, age)
            errors = CounterMetricFamily("perpwatch_alerts_errors", "Failed iterations of alert tasks (counted; the "
                                         "task goes on).", labels=["task"])
            for task, n in s.get("errors", {}).items():
                errors.add_metric([task], n)
            yield from (errors, expired)


def scrape(host: str, port: int, timeout: float = 2.0) -> list[tuple[str, dict[str, str], float]]:
    """A running daemon's /metrics as (sample name, labels, value), read with
    prometheus_client's own parser. Raises OSError when the endpoint is not reachable."""
    import urllib.request

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    return [(s.name, s.labels, s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def serve(daemon, host: str, port: int) -> ThreadingHTTPServer | None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))
    ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, open fds, ...
    PlatformCollector(registry=registry)  # python_info

    samples = RateLimitedSamples(per_minute=1)

    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a scraper that stops reading costs its own thread, not forever
        def do_GET(self):  # noqa: N802 (http.server's naming)
            try:
                self._answer()
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass  # the scraper went away: its problem, not ours (and no traceback)
            except Exception as e:  # a collector bug: answer 500, log once per minute
                if samples.allow("metrics"):
                    log.error("metrics_failed", error=f"{type(e).__name__}: {e}"[:300])
                try:
                    self.send_error(500)
                except OSError:
                    pass

        def _answer(self) -> None:
            status = 200
            if self.path.startswith("/metrics"):
                body, ctype = generate_latest(registry), CONTENT_TYPE_LATEST
            elif self.path.startswith("/healthz"):
                ok, text = health(daemon)
                status, body, ctype = (200 if ok else 503), text.encode(), "text/plain"
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    try:
        httpd = ThreadingHTTPServer((host, port), Handler)
    except OSError as e:
        log.warning("metrics_unavailable", listen=f"{host}:{port}", error=str(e))
        return None
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics_listening", listen=f"{host}:{httpd.server_address[1]}")
    return httpd
