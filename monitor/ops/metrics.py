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
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

log = structlog.get_logger("perpwatch.metrics")


class DaemonCollector:
    """Reads a running Daemon's counters at scrape time."""

    def __init__(self, daemon) -> None:
        self.daemon = daemon

    def collect(self):
        d = self.daemon
        events = CounterMetricFamily("perpwatch_events", "Events applied, by type.", labels=["type"])
        for t, n in d.pipeline.counts.items():
            events.add_metric([t], n)
        yield events
        frames = CounterMetricFamily("perpwatch_frames", "Frames received, by source.", labels=["source"])
        drops = CounterMetricFamily("perpwatch_decode_errors", "Frames/events dropped, by source and reason.",
                                    labels=["source", "reason"])
        unknown = CounterMetricFamily("perpwatch_unknown_messages", "Unknown types ignored, by source.",
                                      labels=["source"])
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
            unknown.add_metric([name], sum(stats.unknown.values()))
        yield from (frames, drops, unknown, connected, last)
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
        from monitor.daemon import LAG_BUCKETS

        hist = HistogramMetricFamily("perpwatch_frame_event_lag_seconds",
                                     "Wall clock minus the last event time of each frame, at processing.")
        cum, buckets = 0, []
        for bound, n in zip((*LAG_BUCKETS, float("inf")), d.lag_buckets):
            cum += n
            buckets.append(("+Inf" if bound == float("inf") else str(bound), cum))
        hist.add_metric([], buckets, sum_value=d.lag_sum)
        yield hist
        loop = GaugeMetricFamily("perpwatch_loop_lag_seconds", "How late the event loop's last heartbeat ran.")
        loop.add_metric([], d.loop_lag_s)
        yield loop
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
            sent = CounterMetricFamily("perpwatch_notifications_sent", "Notifications delivered (2xx).")
            sent.add_metric([], s["sent"])
            failed = CounterMetricFamily("perpwatch_notifications_failed", "Delivery attempts that failed.")
            failed.add_metric([], s["failed"])
            open_ = GaugeMetricFamily("perpwatch_incidents_open", "Open incidents.")
            open_.add_metric([], s["open_incidents"])
            pending = GaugeMetricFamily("perpwatch_notifications_pending", "Notifications in the outbox.")
            pending.add_metric([], s.get("pending", 0))
            age = GaugeMetricFamily("perpwatch_outbox_oldest_pending_seconds", "Age of the oldest undelivered notification.")
            age.add_metric([], s.get("oldest_pending_s", 0.0))
            yield from (sent, failed, open_, pending, age)


def serve(daemon, host: str, port: int) -> ThreadingHTTPServer | None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DaemonCollector(daemon))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path.startswith("/metrics"):
                body, ctype = generate_latest(registry), CONTENT_TYPE_LATEST
            elif self.path.startswith("/healthz"):
                body, ctype = b"ok\n", "text/plain"
            else:
                self.send_response(404)
                self.end_headers()
                return
            self.send_response(200)
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
