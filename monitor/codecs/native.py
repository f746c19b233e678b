"""The native perpwatch feed protocol (CONTRACT section 1).

A frame is one event object or a JSON array of them. The whole frame is decoded in one
msgspec call (the fast path); only when that fails is it re-read event by event, so
one bad event costs its own drop and the frame's valid events still count.

>>> c = NativeCodec()
>>> c.decode(b'[{"type":"heartbeat","ts":1732400000000},{"type":"new_thing","ts":1}]')
[Heartbeat(ts=1732400000000)]
>>> c.stats.unknown["new_thing"]
1
"""

from __future__ import annotations

import msgspec

from monitor.codecs import DecodeStats
from monitor.events import EVENT_TAGS, Event


class _Probe(msgspec.Struct):
    type: str = ""


_frame = msgspec.json.Decoder(list[Event], strict=False)
_single = msgspec.json.Decoder(Event, strict=False)
_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_probe = msgspec.json.Decoder(_Probe)


class NativeCodec:
    """Decoder for ``format = "perpwatch"``."""

    def __init__(self) -> None:
        self.stats = DecodeStats()

    def decode(self, frame: bytes | str) -> list[Event]:
        stats = self.stats
        stats.frames += 1
        try:
            head = frame.lstrip()[:1]
            is_list = head in (b"[", "[")
            try:
                events = _frame.decode(frame) if is_list else [_single.decode(frame)]
            except (msgspec.ValidationError, msgspec.DecodeError):
                events = self._slow(frame, is_list)
        except Exception as e:  # never raise on input: RecursionError, UnicodeEncodeError...
            stats.failed(frame, e)
            return []
        stats.events += len(events)
        return events

    def _slow(self, frame: bytes | str, is_list: bool) -> list[Event]:
        if is_list:
            try:
                parts = _raw_list.decode(frame)
            except msgspec.DecodeError as e:
                self.stats.drop("malformed_frame", frame, str(e))
                return []
        else:
            parts = [frame]
        out: list[Event] = []
        for part in parts:
            try:
                out.append(_single.decode(part))
            except (msgspec.ValidationError, msgspec.DecodeError) as e:
                self._classify(part, e)
        return out

    def _classify(self, part: bytes | str | msgspec.Raw, err: Exception) -> None:
        try:
            kind = _probe.decode(part).type
        except (msgspec.ValidationError, msgspec.DecodeError):
            self.stats.drop("malformed_event" if isinstance(part, msgspec.Raw) else "malformed_frame",
                            bytes(part) if isinstance(part, msgspec.Raw) else part, str(err))
            return
        if kind and kind not in EVENT_TAGS:
            self.stats.count_unknown(kind)
        else:
            self.stats.drop("invalid_event", bytes(part) if isinstance(part, msgspec.Raw) else part, str(err))
