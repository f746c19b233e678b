"""Where frames come from: websocket clients with reconnect, and recorded files.

Exceptions and what they mean, in one place:

    OSError, TimeoutError            network trouble            -> retry with backoff
    ConnectionClosed (1009)          frame over max_frame_bytes  -> counted, reconnect now
    ConnectionClosed (other)         peer went away              -> retry with backoff
    InvalidStatus 5xx / 429          server trouble              -> retry with backoff
    InvalidStatus 4xx, InvalidURI    our configuration is wrong  -> logged as an error, retried
                                                                    at the backoff cap (a risk
                                                                    daemon never gives up)
A parse error is never a reason to reconnect: codecs count and drop bad frames.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import time
from pathlib import Path
from typing import Awaitable, Callable, Iterator

import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from monitor.config import SourceConfig

log = structlog.get_logger("perpwatch.sources")

MESSAGE_TOO_BIG = 1009


def backoff_delays(first: float = 1.0, cap: float = 30.0, factor: float = 2.0,
                   rng: random.Random | None = None) -> Iterator[float]:
    """Full-jitter exponential backoff: uniform(0, min(cap, first * factor**n)).

    >>> d = backoff_delays(1.0, 8.0, rng=random.Random(1))
    >>> all(0 <= next(d) <= 8.0 for _ in range(20))
    True
    """
    rng = rng or random.Random()
    ceiling = first
    while True:
        yield rng.uniform(0, ceiling)
        ceiling = min(cap, ceiling * factor)


def classify(exc: BaseException) -> str:
    """'oversized' | 'retry' | 'fatal' for an exception raised by a connection."""
    if isinstance(exc, ConnectionClosed):
        sent = exc.sent
        if sent is not None and sent.code == MESSAGE_TOO_BIG:
            return "oversized"
        return "retry"
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return "retry" if status >= 500 or status == 429 else "fatal"
    if isinstance(exc, InvalidURI):
        return "fatal"
    if isinstance(exc, (OSError, TimeoutError, InvalidHandshake, EOFError)):
        return "retry"
    raise exc  # a bug of ours: let it surface, not loop


class SourceStatus:
    """What ``status`` and metrics report about a source."""

    __slots__ = ("name", "connected", "connects", "disconnects", "oversized", "frames",
                 "bytes", "last_frame_wall", "last_error")

    def __init__(self, name: str) -> None:
        self.name = name
        self.connected = False
        self.connects = 0
        self.disconnects = 0
        self.oversized = 0
        self.frames = 0
        self.bytes = 0
        self.last_frame_wall = 0.0
        self.last_error = ""


FrameSink = Callable[[bytes | str], Awaitable[None]]


async def run_websocket(cfg: SourceConfig, sink: FrameSink, status: SourceStatus, session=None,
                        delays: Iterator[float] | None = None) -> None:
    """Read frames from the session's URL forever, reconnecting; cancel the task to stop."""
    from monitor.venues import Session

    session = session or Session(cfg, None)
    delays = delays or backoff_delays(cap=cfg.reconnect_max.seconds)
    while True:
        keepalive = None
        try:
            async with connect(session.url(), max_size=cfg.max_frame_bytes, open_timeout=10,
                               ping_interval=cfg.ping_interval.seconds,
                               ping_timeout=cfg.ping_timeout.seconds,
                               compression="deflate", max_queue=64) as ws:
                status.connected = True
                status.connects += 1
                log.info("source_connected", source=cfg.name, connects=status.connects)
                delays = backoff_delays(cap=cfg.reconnect_max.seconds)  # reset after a good connection
                await session.on_connect(ws)
                keepalive = asyncio.create_task(session.keepalive(ws), name=f"keepalive:{cfg.name}")
                opened = time.monotonic()
                async for frame in ws:
                    status.frames += 1
                    status.bytes += len(frame)
                    status.last_frame_wall = time.time()
                    await sink(frame)
                    if session.max_age_s is not None and time.monotonic() - opened > session.max_age_s:
                        log.info("source_recycled", source=cfg.name, reason="max connection age")
                        break
                if session.max_age_s is not None and time.monotonic() - opened > session.max_age_s:
                    continue
                raise ConnectionClosed(ws.protocol.close_rcvd, ws.protocol.close_sent)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # classify() re-raises what is not a connection problem
            kind = classify(e)
            if status.connected:
                status.disconnects += 1
            status.connected = False
            status.last_error = f"{type(e).__name__}: {e}"[:300]
            if kind == "oversized":
                status.oversized += 1
                log.warning("frame_oversized", source=cfg.name, max_frame_bytes=cfg.max_frame_bytes,
                            action="dropped; reconnecting")
                continue
            delay = cfg.reconnect_max.seconds if kind == "fatal" else next(delays)
            log.log(40 if kind == "fatal" else 30, "source_disconnected", source=cfg.name,
                    error=status.last_error, retry_in_s=round(delay, 2))
            await asyncio.sleep(delay)
        finally:
            if keepalive is not None:
                keepalive.cancel()


def read_recording(path: str | Path) -> Iterator[bytes]:
    """Frames from a recording: one frame per line, optionally gzipped (by magic bytes)."""
    p = Path(path)
    with p.open("rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if gz else open
    with opener(p, "rb") as f:
        for line in f:
            line = line.strip()
            if line:
                yield line
