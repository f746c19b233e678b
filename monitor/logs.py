"""structlog set-up, decided once: JSON lines for journald, key=value on a terminal."""

from __future__ import annotations

import logging
import sys
import time

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", fmt: str = "auto", stream=None) -> None:
    stream = stream if stream is not None else sys.stderr
    json_lines = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer = (structlog.processors.JSONRenderer() if json_lines
                else structlog.dev.ConsoleRenderer(colors=stream.isatty()))
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )


class RateLimitedSamples:
    """Logs at most ``per_minute`` drop samples per key (source) per wall-clock minute.

    The codec counts every drop; this decides which few become log lines, so a garbage
    flood costs counters, not disk.
    """

    def __init__(self, per_minute: int = 5, clock=time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._window: dict[str, tuple[float, int]] = {}

    def allow(self, key: str) -> bool:
        now = self.clock()
        start, n = self._window.get(key, (now, 0))
        if now - start >= 60:
            start, n = now, 0
        if n >= self.per_minute:
            self._window[key] = (start, n)
            return False
        self._window[key] = (start, n + 1)
        return True
