"""Where frames come from: websocket clients with reconnect, and recorded files.

Every way a connection ends is a reconnect after a backoff delay; nothing a peer or the
network does ends :func:`run_websocket` (only cancelling its task does). Exceptions and
what they mean, in one place:

    ConnectionClosed (1000/1001)     the peer closed cleanly     -> reconnect with backoff
                                     (venue restart, load balancer, connection recycling)
    ConnectionClosed (1009)          frame over max_frame_bytes  -> counted, reconnect with backoff
    ConnectionClosed (other)         peer went away              -> reconnect with backoff
    (no frame for stale_after)       connected but stale         -> aborted by a watchdog, counted,
                                                                    reconnect with backoff
    OSError, TimeoutError            network trouble, TLS        -> reconnect with backoff
    InvalidStatus 5xx / 429          server trouble              -> reconnect with backoff
    InvalidStatus 4xx, InvalidURI    our configuration is wrong  -> logged as an error, retried
                                                                    at the backoff cap (a risk
                                                                    daemon never gives up)
    anything else                    unexpected                  -> logged as an error with its
                                                                    traceback, reconnect with backoff

The backoff (full jitter, capped at ``reconnect_max``) starts over only after a connection
that delivered frames for ``HEALTHY_AFTER_S``: a server that closes, or sends an oversized
snapshot, on every connect is retried ever more slowly instead of hundreds of times a minute.
A parse error is never a reason to reconnect: codecs count and drop bad frames.
"""

from __future__ import annotations

import asyncio
import gzip
import heapq
import os
import random
import ssl
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from monitor.codecs import recorded
from monitor.config import SourceConfig

log = structlog.get_logger("perpwatch.sources")

MESSAGE_TOO_BIG = 1009
CLEAN_CLOSES = (1000, 1001)
HEALTHY_AFTER_S = 60.0  # a connection up (and delivering) this long resets the backoff
CLOSE_TIMEOUT_S = 5.0  # how long a closing handshake may take before the socket is dropped


def backoff_delays(first: float = 1.0, cap: float = 30.0, factor: float = 2.0,
                   rng: random.Random | None = None) -> Iterator[float]:
    """Full-jitter exponential backoff: uniform(0, min(cap, first * factor**n)).

    >>> d = backoff_delays(1.0, 8.0, rng=random.Random(1))
    >>> all(0 <= next(d) <= 8.0 for _ in range(20))
    True
    """
    rng = rng or random.Random()
    ceiling = min(first, cap)
    while True:
        yield rng.uniform(0, ceiling)
        ceiling = min(cap, ceiling * factor)


def describe(exc: BaseException) -> str:
    """A log line's reason for a failed connection or request.

    A TLS certificate failure is named as such even when wrapped (httpx's ConnectError,
    an OSError from the event loop), instead of a bare class name.

    >>> import ssl
    >>> e = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    >>> e.verify_message = "self-signed certificate"
    >>> try:
    ...     raise ConnectionError("ConnectError") from e
    ... except ConnectionError as wrapped:
    ...     describe(wrapped)
    'TLS certificate verification failed: self-signed certificate'
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            why = getattr(e, "verify_message", None) or getattr(e, "reason", None) or str(e)
            return f"TLS certificate verification failed: {why}"
        if isinstance(e, ssl.SSLError):
            return f"TLS error: {getattr(e, 'reason', None) or e}"
        e = e.__cause__ or e.__context__
    if isinstance(exc, ConnectionClosed):
        if exc.sent is not None and (exc.rcvd is None or exc.rcvd_then_sent is False):
            who, close = "we", exc.sent
        elif exc.rcvd is not None:
            who, close = "peer", exc.rcvd
        else:
            return "connection lost without a close frame"
        return f"{who} closed the connection: {close.code} {close.reason or ''}".rstrip()
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def classify(exc: BaseException) -> str:
    """'oversized' | 'closed' | 'retry' | 'fatal' for an exception of a connection.

    Never raises: an exception it does not know is logged as an error and retried (with
    backoff, like every other path).
    """
    try:
        if isinstance(exc, ConnectionClosed):
            if exc.sent is not None and exc.sent.code == MESSAGE_TOO_BIG:
                return "oversized"
            close = exc.rcvd or exc.sent
            if close is not None and close.code in CLEAN_CLOSES:
                return "closed"
            return "retry"
        if isinstance(exc, InvalidStatus):
            status = exc.response.status_code
            return "retry" if status >= 500 or status == 429 else "fatal"
        if isinstance(exc, InvalidURI):
            return "fatal"
        if isinstance(exc, (OSError, TimeoutError, InvalidHandshake, EOFError)):
            return "retry"
    except Exception:  # a malformed exception object: still a reason to retry, not to die
        pass
    log.error("source_unexpected_error", error=describe(exc), action="reconnecting with backoff",
              exc_info=exc)
    return "retry"


class Session:
    """The native protocol: connect and listen; the server pushes snapshots itself."""

    max_age_s: float | None = None  # reconnect on purpose after this long

    def __init__(self, cfg: SourceConfig, codec: Any) -> None:
        self.cfg = cfg
        self.codec = codec

    def url(self) -> str:
        return self.cfg.url

    async def on_connect(self, ws: Any) -> None:
        return None

    async def keepalive(self, ws: Any) -> None:
        return None

    async def resync(self, put) -> None:
        """Run alongside the connection; ``put(item)`` queues a RestSnapshot."""
        return None

    def apply(self, item: Any) -> list:
        return []


class SourceStatus:
    """What ``status`` and metrics report about a source."""

    __slots__ = ("name", "connected", "connects", "disconnects", "oversized", "frames",
                 "bytes", "last_frame_wall", "last_error", "clean_closes", "stale_reconnects",
                 "retries", "last_retry_in_s")

    def __init__(self, name: str) -> None:
        self.name = name
        self.connected = False
        self.connects = 0
        self.disconnects = 0
        self.oversized = 0  # connections closed by us (1009) for a frame over max_frame_bytes
        self.frames = 0
        self.bytes = 0
        self.last_frame_wall = 0.0
        self.last_error = ""
        self.clean_closes = 0  # connections the peer closed with 1000/1001
        self.stale_reconnects = 0  # connections dropped by us after stale_after without a frame
        self.retries = 0  # backoff delays taken (every path counts)
        self.last_retry_in_s = 0.0


FrameSink = Callable[[bytes | str], Awaitable[None]]


class _Watch:
    """Since when the reader has been waiting for a frame (None: handing one to the sink)."""

    __slots__ = ("since", "stale")

    def __init__(self, now: float) -> None:
        self.since: float | None = now
        self.stale = False


async def _watch_stale(ws, watch: _Watch, stale_s: float) -> None:
    """Abort the connection once the reader has waited ``stale_s`` for a frame.

    A watchdog rather than a timeout around each ``recv()``: that costs ~10 us per frame
    (a timer armed and cancelled), this costs two attribute stores per frame and about one
    wake-up per ``stale_s``. Time spent blocked in the sink (a full queue) does not count.
    """
    loop = asyncio.get_running_loop()
    while True:
        since = watch.since
        if since is None:
            await asyncio.sleep(stale_s / 4)
            continue
        left = since + stale_s - loop.time()
        if left <= 0:
            watch.stale = True
            ws.transport.abort()  # a peer silent this long will not answer a closing handshake
            return
        await asyncio.sleep(left)


def _consume(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # a keepalive that failed with its connection: retrieved, not logged twice


async def run_websocket(cfg: SourceConfig, sink: FrameSink, status: SourceStatus, session=None,
                        delays: Iterator[float] | None = None,
                        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
    """Read frames from the session's URL forever, reconnecting; cancel the task to stop.

    ``delays`` (the backoff iterator) and ``sleep`` are injectable for tests; an injected
    iterator is never reset.
    """
    session = session or Session(cfg, None)
    cap = cfg.reconnect_max.seconds

    def fresh() -> Iterator[float]:
        return delays if delays is not None else backoff_delays(cap=cap)

    backoff = fresh()
    stale_s = cfg.stale_after.seconds if cfg.stale_after.seconds > 0 else None
    clock = asyncio.get_running_loop().time
    while True:
        keepalive = watchdog = None
        watch = _Watch(clock())
        opened: float | None = None
        frames_before = status.frames
        try:
            async with connect(session.url(), max_size=cfg.max_frame_bytes, open_timeout=10,
                               ping_interval=cfg.ping_interval.seconds,
                               ping_timeout=cfg.ping_timeout.seconds, close_timeout=CLOSE_TIMEOUT_S,
                               compression="deflate", max_queue=64) as ws:
                status.connected = True
                status.connects += 1
                opened = time.monotonic()
                log.info("source_connected", source=cfg.name, connects=status.connects)
                await session.on_connect(ws)
                keepalive = asyncio.create_task(session.keepalive(ws), name=f"keepalive:{cfg.name}")
                keepalive.add_done_callback(_consume)
                if stale_s is not None:
                    watchdog = asyncio.create_task(_watch_stale(ws, watch, stale_s), name=f"stale:{cfg.name}")
                    watchdog.add_done_callback(_consume)
                while True:
                    watch.since = clock()  # waiting for the peer from now (not while the sink is full)
                    frame = await ws.recv()
                    watch.since = None
                    status.frames += 1
                    status.bytes += len(frame)
                    status.last_frame_wall = time.time()
                    await sink(frame)
                    if session.max_age_s is not None and time.monotonic() - opened > session.max_age_s:
                        log.info("source_recycled", source=cfg.name, reason="max connection age")
                        break
            kind, error = "recycled", "max connection age"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # every end of a connection is a reconnect; classify() never raises
            if watch.stale:  # the watchdog aborted the connection: that is why recv failed
                kind, error = "stale", f"no frame for {stale_s:g}s (stale_after)"
            else:
                kind, error = classify(e), describe(e)
        finally:
            for task in (keepalive, watchdog):
                if task is not None:
                    task.cancel()
        if status.connected:
            status.disconnects += 1
        status.connected = False
        status.last_error = error
        healthy = (opened is not None and status.frames > frames_before
                   and time.monotonic() - opened >= HEALTHY_AFTER_S)
        if healthy:
            backoff = fresh()  # a good connection: start the backoff over
        delay = cap if kind == "fatal" else next(backoff, cap)
        status.retries += 1
        status.last_retry_in_s = delay
        retry_in_s = round(delay, 2)
        if kind == "oversized":
            status.oversized += 1
            log.warning("frame_oversized", source=cfg.name, max_frame_bytes=cfg.max_frame_bytes,
                        action="dropped; reconnecting", retry_in_s=retry_in_s)
        elif kind == "stale":
            status.stale_reconnects += 1
            log.warning("source_stale", source=cfg.name, error=error, action="reconnecting",
                        stale_reconnects=status.stale_reconnects, retry_in_s=retry_in_s)
        elif kind in ("closed", "recycled"):
            if kind == "closed":
                status.clean_closes += 1
            log.info("source_closed", source=cfg.name, reason=error, retry_in_s=retry_in_s)
        else:
            log.log(40 if kind == "fatal" else 30, "source_disconnected", source=cfg.name,
                    error=error, retry_in_s=retry_in_s)
        await sleep(delay)


MAX_LINE_BYTES = 16 * 1024 * 1024  # a recorded frame longer than this is skipped, not read whole
_SKIP_CHUNK = 1 << 16


class Recording:
    """Frames from a recording: one frame per line, optionally gzipped (by magic bytes).

    A line longer than ``max_line_bytes`` is never held whole in memory: it is read in
    64 KiB chunks up to its newline and discarded, counted in ``skipped_lines`` and
    logged once (with the line number and size), and the lines after it still come
    through. A gzip of 1 MB expanding to one 1 GiB line costs 64 KiB, not 2 GB.
    """

    def __init__(self, path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.path = Path(path)
        self.max_line_bytes = max_line_bytes
        self.lines = 0
        self.skipped_lines = 0
        self.truncated = False

    def __iter__(self) -> Iterator[bytes]:
        p = self.path
        with p.open("rb") as raw:
            gz = raw.read(2) == b"\x1f\x8b"
        opener = gzip.open if gz else open
        limit = self.max_line_bytes
        with opener(p, "rb") as f:
            readline = f.readline
            while True:
                try:
                    line = readline(limit + 1)
                except EOFError:  # a gzip cut off (a killed recorder): what was flushed is there
                    self.truncated = True
                    log.warning("recording_truncated", path=str(self.path), line=self.lines,
                                action="stopped at the cut")
                    return
                if not line:
                    return
                self.lines += 1
                if len(line) > limit and not line.endswith(b"\n"):
                    self._skip(readline, len(line))
                    continue
                line = line.strip()
                if line:
                    yield line

    def _skip(self, readline: Callable[[int], bytes], size: int) -> None:
        while True:
            chunk = readline(_SKIP_CHUNK)
            size += len(chunk)
            if not chunk or chunk.endswith(b"\n"):
                break
        self.skipped_lines += 1
        if self.skipped_lines == 1:
            log.warning("recording_line_too_long", path=str(self.path), line=self.lines, bytes=size,
                        max_line_bytes=self.max_line_bytes, action="skipped (later ones counted only)")


def read_recording(path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> Recording:
    """Frames from a recording; see :class:`Recording` (iterate it; ``skipped_lines`` counts
    the lines over ``max_line_bytes``)."""
    return Recording(path, max_line_bytes)


# -- recorded sessions: perpwatch record writes them, replay reads them and the others ----
RECORDING_SUFFIX = ".rec.gz"


class Recorder:
    """Appends every item the daemon processes (frames, REST snapshots, stall advances) to
    ``DIR/perpwatch-<UTC start>-<pid>.rec.gz`` with its receive time, in processing order
    (see ``monitor.codecs.recorded``), so ``perpwatch replay`` feeds the pipeline what the
    daemon fed it.

    Gzip level 1, flushed (``Z_SYNC_FLUSH``) by the daemon's flusher about once a second:
    a killed daemon loses at most that second, and the reader stops cleanly at a cut-off
    end. A write that fails (full disk) is counted and logged once a minute; the daemon
    goes on detecting. The file grows until the daemon stops: rotate by restarting.
    """

    def __init__(self, out_dir: str | Path, sources: dict[str, str],
                 watch: dict[str, recorded.Watch] | None = None) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        self.path = out / f"perpwatch-{stamp}-{os.getpid()}{RECORDING_SUFFIX}"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        self._raw = os.fdopen(fd, "wb")
        self._f = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=1)
        self._f.write(recorded.header_line(sources, watch))
        self.items = 0
        self.failed = 0
        self._last_log = 0.0

    def write(self, source: str, payload: Any, recv_ns: int) -> None:
        try:
            self._f.write(recorded.format_item(source, payload, recv_ns))
            self.items += 1
        except (OSError, ValueError) as e:  # full disk; ValueError: written after close
            self._failed(e)

    def flush(self) -> None:
        try:
            self._f.flush()
            self._raw.flush()
        except (OSError, ValueError) as e:
            self._failed(e)

    def close(self) -> None:
        try:
            self._f.close()
            self._raw.close()
        except OSError as e:
            self._failed(e)

    def _failed(self, e: BaseException) -> None:
        self.failed += 1
        now = time.monotonic()
        if now - self._last_log >= 60.0:
            self._last_log = now
            log.error("recording_write_failed", path=str(self.path), error=f"{type(e).__name__}: {e}"[:300],
                      failed_total=self.failed, note="the daemon goes on; the recording has a hole")


class RecordedItems:
    """Items of a recorded session (``monitor.codecs.recorded``): a perpwatch recording, a
    directory of them (in name order, which is start-time order), an hftbacktest capture,
    a cryptofeed ``.ws.`` file (merged by receive time with its sibling ``.http.`` files,
    which hold the REST snapshots), or a plain one-frame-per-line file.

    ``sources`` is the perpwatch header's source -> format ({} for the other containers:
    every item is for the one codec the caller chose). After iterating, ``skipped_lines``
    and ``unreadable`` count what could not be used.
    """

    def __init__(self, path: str | Path, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        p = Path(path)
        self.files = sorted(f for f in p.iterdir() if f.name.endswith(RECORDING_SUFFIX)) if p.is_dir() else [p]
        self.max_line_bytes = max_line_bytes
        self.container = "lines"
        self.sources: dict[str, str] = {}
        self.watch: dict[str, recorded.Watch] = {}
        self.http: list[Path] = []
        self._parts: list[Any] = []
        if not self.files:
            return
        first = next(iter(Recording(self.files[0], max_line_bytes)), b"")
        self.container = recorded.detect(first)
        if self.container == "perpwatch":
            for f in self.files:
                sources, watch = recorded.parse_header(next(iter(Recording(f, max_line_bytes)), b""))
                self.sources.update(sources)
                self.watch.update(watch)
        elif self.container == "cryptofeed" and ".ws." in p.name:
            prefix = p.name.split(".ws.", 1)[0] + ".http."
            self.http = sorted(f for f in p.parent.iterdir() if f.name.startswith(prefix))

    @property
    def skipped_lines(self) -> int:
        return sum(r.skipped_lines for r, _ in self._parts)

    @property
    def unreadable(self) -> int:
        return sum(i.unreadable for _, i in self._parts)

    def _open(self, path: Path, container: str) -> Iterator[recorded.Item]:
        rec = Recording(path, self.max_line_bytes)
        its = recorded.Items(rec, container)
        self._parts.append((rec, its))
        return iter(its)

    def __iter__(self) -> Iterator[recorded.Item]:
        self._parts = []
        if self.container == "cryptofeed" and self.http:
            streams = [self._open(self.files[0], "cryptofeed")]
            streams += [self._open(h, "cryptofeed-http") for h in self.http]
            yield from heapq.merge(*streams, key=lambda item: item[2])
            return
        for f in self.files:
            yield from self._open(f, self.container)
