"""Codecs: venue bytes in, ``list[Event]`` out. Pure: no I/O, no clock, no logging.

A codec counts what it drops in its ``DecodeStats`` and keeps a few truncated samples;
the shell that owns it decides when to log them (rate-limited), so a flood of garbage
costs a counter increment, not a log line.

``decode()`` never raises, whatever the bytes: besides the msgspec errors each codec
sorts into its own reasons, anything else a frame provokes (``RecursionError`` on deep
nesting, ``UnicodeEncodeError`` on a str frame with lone surrogates...) is counted by
:meth:`DecodeStats.failed` and the frame is dropped. The guard is a ``try`` around the
fast path: free in CPython 3.11+ until something raises.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Protocol

from monitor.events import Event

SAMPLE_CHARS = 200
MAX_UNKNOWN = 256  # distinct unknown names kept; the rest count under OTHER
UNKNOWN_CHARS = 40  # an unknown name is truncated to this many characters
OTHER = "(other)"
# C0/C1 control characters shown escaped in samples and names: they end up in logs and tables.
_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0))}


def printable(text: str) -> str:
    """``text`` safe for a log line: control characters escaped, lone surrogates escaped."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8").translate(_CONTROL)


def sample_text(sample: object) -> str:
    """A frame (or part of one) as a log sample: its first ``SAMPLE_CHARS``, printable, with
    how much was cut."""
    if isinstance(sample, (bytes, bytearray, memoryview)):
        n = len(sample)
        text = bytes(sample[:SAMPLE_CHARS]).decode("utf-8", "replace")
        suffix = f"...(+{n - SAMPLE_CHARS} bytes)" if n > SAMPLE_CHARS else ""
    else:
        text = sample if isinstance(sample, str) else repr(sample)
        n = len(text)
        text = text[:SAMPLE_CHARS]
        suffix = f"...(+{n - SAMPLE_CHARS} chars)" if n > SAMPLE_CHARS else ""
    return printable(text) + suffix


class DecodeStats:
    """Counters of what a codec accepted and dropped, with a bounded sample queue."""

    __slots__ = ("events", "frames", "dropped", "unknown", "samples")

    def __init__(self, max_samples: int = 32) -> None:
        self.events = 0
        self.frames = 0
        self.dropped: Counter[str] = Counter()  # reason -> count (malformed, invalid, oversized...)
        self.unknown: Counter[str] = Counter()  # unknown type / message kind -> count (bounded)
        self.samples: deque[tuple[str, str]] = deque(maxlen=max_samples)

    def drop(self, reason: str, sample: object, error: str = "") -> None:
        """Count a drop under ``reason`` and keep a truncated, printable sample of it."""
        self.dropped[reason] += 1
        text = sample_text(sample)
        error = printable(error[:SAMPLE_CHARS])
        self.samples.append((reason, f"{error} :: {text}" if error else text))

    def count_unknown(self, kind: str) -> None:
        """Count an unknown type name: at most ``MAX_UNKNOWN`` distinct ones, then ``OTHER``.

        >>> s = DecodeStats()
        >>> for i in range(MAX_UNKNOWN + 10):
        ...     s.count_unknown(f"t{i}")
        >>> len(s.unknown), s.unknown[OTHER]
        (257, 10)
        """
        unknown = self.unknown
        name = kind[:UNKNOWN_CHARS]
        if name in unknown:  # the common case (bookTicker, kline...): one lookup
            unknown[name] += 1
            return
        name = printable(name)
        if name in unknown or len(unknown) < MAX_UNKNOWN:
            unknown[name] += 1
        else:
            unknown[OTHER] += 1

    def failed(self, frame: object, exc: BaseException) -> None:
        """A frame whose parsing raised something unexpected: counted, never re-raised.

        ``too_deep`` for nesting past the parser's recursion limit, ``malformed_frame`` for
        anything else (lone surrogates in a str frame, a parser bug...).
        """
        self.drop("too_deep" if isinstance(exc, RecursionError) else "malformed_frame", frame,
                  f"{type(exc).__name__}: {exc}")

    def drain_samples(self) -> list[tuple[str, str]]:
        out = list(self.samples)
        self.samples.clear()
        return out


class Codec(Protocol):
    """Turns one websocket frame into normalized events."""

    stats: DecodeStats

    def decode(self, frame: bytes | str) -> list[Event]: ...

