"""Recorded sessions: what a source received, line by line, in the formats users have.

Pure: these functions turn lines (bytes, without their newline) into items and never
open a file; ``monitor.sources.read_items`` does the reading. An item is
``(source, payload, recv_ns)`` where ``payload`` is one of

- a websocket frame (``bytes``), for the source's codec;
- a :class:`Snapshot`: a REST book snapshot body, for ``codec.on_rest_snapshot``;
- an :class:`Advance`: the live daemon moved event time on by wall time (a stalled
  stream, ``daemon.stall_after``), so a replay runs the same ticks.

Containers (detected from the first line by :func:`detect`):

``perpwatch``
    written by ``perpwatch record``. First line ``#perpwatch-recording 1 {"sources":
    {"<name>": "<format>", ...}}``, then ``<recv ns> <source> <kind> <payload>`` with kind
    ``f`` (frame), ``s:<SYMBOL>`` (REST snapshot body), ``t:<event ms>`` (an Advance),
    and a ``b64`` suffix on ``f``/``s`` when the payload had a newline or was binary.
    The lines are in the order the daemon processed them, so a replay feeds the
    pipeline exactly what the daemon fed it.
``hftbacktest``
    ``<local receive ns> <raw frame>``; the REST snapshot body inline (a JSON object with
    ``lastUpdateId`` and no ``e``/``stream``) with no symbol: the Binance codec matches it
    to the waiting book whose buffered diffs bridge its ``lastUpdateId``.
``cryptofeed``
    first line ``<url> <-> <ts>``; then ``<recv s>: <raw frame>``, and ``<url> <- <ts>:
    <request>`` for what we sent (skipped). Its REST responses live in sibling
    ``<EXCHANGE>.http.*`` files as ``<url> -> <recv s>: <body>``; the symbol is in the URL.
``lines``
    one frame per line (``perpwatch simulate --record``, older recordings).

>>> list(parse_perpwatch_line(b'1723161255088156767 binance f {"e":"x"}'))
[('binance', b'{"e":"x"}', 1723161255088156767)]
>>> parse_perpwatch_line(b'5 binance s:ETHUSDT {"lastUpdateId":1}')
[('binance', Snapshot(symbol='ETHUSDT', body=b'{"lastUpdateId":1}'), 5)]
>>> parse_hftbacktest_line(b'7 {"lastUpdateId":9,"bids":[],"asks":[]}')
[('', Snapshot(symbol=None, body=b'{"lastUpdateId":9,"bids":[],"asks":[]}'), 7)]
"""

from __future__ import annotations

import base64
from typing import Iterable, Iterator, Union
from urllib.parse import parse_qs, quote, unquote, urlsplit

import msgspec

MAGIC = b"#perpwatch-recording"
VERSION = 1


class Snapshot(msgspec.Struct, frozen=True):
    """A REST book snapshot to hand the codec, in order with the source's frames.
    ``symbol`` None: the recording did not say (hftbacktest); the codec matches it."""

    symbol: Union[str, None]
    body: bytes


class Advance(msgspec.Struct, frozen=True):
    """The live daemon advanced event time to ``ts`` without an event (a stalled stream)."""

    ts: int


Payload = Union[bytes, Snapshot, Advance]
Item = tuple[str, Payload, int]  # (source, payload, receive time ns)


class Watch(msgspec.Struct):
    """How the recording daemon watched a source's coverage (monitor.state.coverage), so a
    replay watches it the same way."""

    symbols: list[str] = []
    streams: list[str] = []
    unsynced_after_ms: int = 30_000
    silent_after_ms: int = 60_000


class _Header(msgspec.Struct):
    sources: dict[str, str] = {}
    watch: dict[str, Watch] = {}


def detect(first: bytes) -> str:
    """The container a recording is in, from its first line.

    >>> detect(b'#perpwatch-recording 1 {}'), detect(b'1723161255088156767 {"stream":1}')
    ('perpwatch', 'hftbacktest')
    >>> detect(b'wss://fstream.binance.com/stream?streams=a <-> 1626992740.1'), detect(b'{"type":"book"}')
    ('cryptofeed', 'lines')
    """
    if first.startswith(MAGIC):
        return "perpwatch"
    head, sep, rest = first.partition(b" ")
    if sep and head.isdigit() and rest[:1] in (b"{", b"["):
        return "hftbacktest"
    if b" <-> " in first and first.split(b"://", 1)[0].isalpha():
        return "cryptofeed"
    return "lines"


def header_line(sources: dict[str, str], watch: dict[str, Watch] | None = None) -> bytes:
    return MAGIC + b" %d " % VERSION + msgspec.json.encode({"sources": sources, "watch": watch or {}}) + b"\n"


def parse_header(line: bytes) -> tuple[dict[str, str], dict[str, Watch]]:
    """(source name -> format, source name -> Watch) from a perpwatch recording's first
    line (empty if unreadable)."""
    parts = line.split(b" ", 2)
    try:
        h = msgspec.json.decode(parts[2], type=_Header) if len(parts) == 3 else _Header()
    except (msgspec.DecodeError, msgspec.ValidationError):
        h = _Header()
    return h.sources, h.watch


def _payload(data: bytes) -> tuple[bytes, bool]:
    """(payload for a line, whether it is base64)."""
    if b"\n" in data or b"\r" in data:
        return base64.b64encode(data), True
    return data, False


def format_item(source: str, payload: bytes | str | Snapshot | Advance, recv_ns: int) -> bytes:
    """One recording line (with its newline) for what the daemon is about to process.

    >>> format_item("b n", Snapshot("X", b'{"a":\\n1}'), 3)
    b'3 b%20n s:X:b64 eyJhIjoKMX0=\\n'
    """
    name = quote(source, safe="")
    if isinstance(payload, Advance):
        return b"%d %s t:%d\n" % (recv_ns, name.encode(), payload.ts)
    if isinstance(payload, Snapshot):
        data, b64 = _payload(payload.body)
        kind = b"s:" + quote(payload.symbol or "", safe="").encode() + (b":b64" if b64 else b"")
    else:
        if isinstance(payload, str):
            payload = payload.encode("utf-8", "surrogatepass")
            data, b64 = _payload(payload)
        else:
            data, b64 = base64.b64encode(payload), True  # a binary frame: kept byte for byte
        kind = b"fb64" if b64 else b"f"
    return b"%d %s %s %s\n" % (recv_ns, name.encode(), kind, data)


def parse_perpwatch_line(line: bytes) -> list[Item]:
    """The item of one perpwatch recording line ([] for a line that is not one)."""
    parts = line.split(b" ", 3)
    if len(parts) < 3 or not parts[0].isdigit():
        return []
    ns, source = int(parts[0]), unquote(parts[1].decode("utf-8", "replace"))
    kind = parts[2]
    data = parts[3] if len(parts) == 4 else b""
    try:
        if kind == b"f":
            return [(source, data, ns)]
        if kind == b"fb64":
            return [(source, base64.b64decode(data, validate=True), ns)]
        if kind.startswith(b"s:"):
            sym, _, enc = kind[2:].partition(b":")
            body = base64.b64decode(data, validate=True) if enc == b"b64" else data
            return [(source, Snapshot(unquote(sym.decode("utf-8", "replace")) or None, body), ns)]
        if kind.startswith(b"t:"):
            return [(source, Advance(int(kind[2:])), ns)]
    except ValueError:  # bad base64 or number: the reader counts the line as unreadable
        return []
    return []


def parse_hftbacktest_line(line: bytes) -> list[Item]:
    head, sep, body = line.partition(b" ")
    if not sep or not head.isdigit():
        return []
    ns = int(head)
    if body.startswith(b'{"lastUpdateId"') or (b'"lastUpdateId"' in body[:64] and b'"stream"' not in body[:64]):
        return [("", Snapshot(None, body), ns)]
    return [("", body, ns)]


def _seconds_ns(text: bytes) -> int | None:
    try:
        return int(round(float(text) * 1e9))
    except ValueError:
        return None


def parse_cryptofeed_line(line: bytes) -> list[Item]:
    """A received message of a cryptofeed ``.ws.`` file ([] for requests and the URL line)."""
    head, sep, body = line.partition(b": ")
    if not sep or b" " in head:  # 'URL <- ts: {...}' is our own request; the first line has no ': '
        return []
    ns = _seconds_ns(head)
    return [] if ns is None else [("", body, ns)]


def parse_cryptofeed_http_line(line: bytes) -> list[Item]:
    """A REST response of a cryptofeed ``.http.`` file, as a Snapshot for the URL's symbol."""
    head, sep, body = line.partition(b": ")
    url, arrow, ts = head.rpartition(b" -> ")
    if not sep or not arrow:
        return []
    ns = _seconds_ns(ts)
    if ns is None:
        return []
    query = parse_qs(urlsplit(url.decode("utf-8", "replace")).query)
    symbol = (query.get("symbol") or query.get("instId") or [None])[0]
    return [("", Snapshot(symbol, body), ns)]


PARSERS = {"perpwatch": parse_perpwatch_line, "hftbacktest": parse_hftbacktest_line,
           "cryptofeed": parse_cryptofeed_line, "cryptofeed-http": parse_cryptofeed_http_line}


class Items:
    """Items of a recording's lines (its first line included) for a detected container
    (``lines``: every line a frame, received at 0). Iterate it; ``unreadable`` then counts
    the lines past the first that were none of the container's kinds (cryptofeed's own
    requests are not counted: they are expected)."""

    def __init__(self, lines: Iterable[bytes], container: str) -> None:
        self.lines = lines
        self.container = container
        self.unreadable = 0

    def __iter__(self) -> Iterator[Item]:
        it = iter(self.lines)
        if self.container == "lines":
            for line in it:
                yield ("", line, 0)
            return
        parse = PARSERS[self.container]
        first = True
        for line in it:
            got = parse(line)
            if got:
                yield got[0]
            elif not (first and self.container in ("perpwatch", "cryptofeed")) and b" <- " not in line[:2048]:
                self.unreadable += 1
            first = False


def decode(codec, payload: Payload | str) -> list:
    """The events of one recorded payload (an Advance has none: the caller runs its ticks).

    A Snapshot goes to ``codec.on_rest_snapshot``; a codec without REST snapshots counts it
    as ``snapshot_unsupported``.
    """
    if isinstance(payload, Snapshot):
        apply = getattr(codec, "on_rest_snapshot", None)
        if apply is None:
            codec.stats.drop("snapshot_unsupported", payload.body)
            return []
        return apply(payload.symbol, payload.body)
    if isinstance(payload, Advance):
        return []
    return codec.decode(payload)
