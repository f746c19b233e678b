"""structlog set-up, decided once: JSON lines for journald, key=value on a terminal.

Log values carry data from the world (symbols, accounts, error texts). JSON lines escape
control characters; on the console they are shown as ``\\xNN`` (C0, DEL, C1 incl. ESC and
CSI, and the bidi overrides), so no log line can move the cursor, clear the screen or
forge another line.
"""

from __future__ import annotations

import logging
import re
import sys
import time

import structlog

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with every control character shown as ``\\xNN`` / ``\\uNNNN``."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


def strip_controls(_logger, _name, event_dict: dict) -> dict:
    """structlog processor: control characters out of every string key and value (others
    are rendered with repr(), which escapes them already)."""
    return {printable(k) if isinstance(k, str) else k: printable(v) if isinstance(v, str) else v
            for k, v in event_dict.items()}


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
            *(() if json_lines else (strip_controls,)),
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

    MAX_KEYS = 1_000  # keys tracked; beyond it the oldest window is forgotten

    def __init__(self, per_minute: int = 5, clock=time.monotonic) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self._window: dict[str, tuple[float, int]] = {}

    def allow(self, key: str) -> bool:
        now = self.clock()
        if key not in self._window and len(self._window) >= self.MAX_KEYS:
            del self._window[next(iter(self._window))]
        start, n = self._window.get(key, (now, 0))
        if now - start >= 60:
            start, n = now, 0
        if n >= self.per_minute:
            self._window[key] = (start, n)
            return False
        self._window[key] = (start, n + 1)
        return True
