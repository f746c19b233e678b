"""Codecs: venue bytes in, ``list[Event]`` out. Pure: no I/O, no clock, no logging.

A codec counts what it drops in its ``DecodeStats`` and keeps a few truncated samples;
the shell that owns it decides when to log them (rate-limited), so a flood of garbage
costs a counter increment, not a log line.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Protocol

from monitor.events import Event

SAMPLE_CHARS = 200


class DecodeStats:
    """Counters of what a codec accepted and dropped, with a bounded sample queue."""

    __slots__ = ("events", "frames", "dropped", "unknown", "samples")

    def __init__(self, max_samples: int = 32) -> None:
        self.events = 0
        self.frames = 0
        self.dropped: Counter[str] = Counter()  # reason -> count (malformed, invalid, oversized...)
        self.unknown: Counter[str] = Counter()  # unknown type / message kind -> count
        self.samples: deque[tuple[str, str]] = deque(maxlen=max_samples)

    def drop(self, reason: str, sample: bytes | str, error: str = "") -> None:
        self.dropped[reason] += 1
        text = sample.decode("utf-8", "replace") if isinstance(sample, bytes) else sample
        if len(text) > SAMPLE_CHARS:
            text = text[:SAMPLE_CHARS] + f"...(+{len(text) - SAMPLE_CHARS} chars)"
        self.samples.append((reason, f"{error} :: {text}" if error else text))

    def drain_samples(self) -> list[tuple[str, str]]:
        out = list(self.samples)
        self.samples.clear()
        return out


class Codec(Protocol):
    """Turns one websocket frame into normalized events."""

    stats: DecodeStats

    def decode(self, frame: bytes | str) -> list[Event]: ...
