"""Per-venue session behaviour around a pure codec: URL, subscribe, keepalive, resync.

The codecs in ``monitor/codecs`` turn bytes into events and say which symbols need a
resync (``needs_snapshot()``); a session does the talking: which URL to open, what to
send on connect, the application-level ping a venue wants, how a book is resynced (a
Binance REST snapshot fetched with httpx; a Bybit topic resubscribed), and when to
reconnect on purpose (Binance closes every connection after 24 h).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgspec
import structlog

from monitor.codecs.formats import codec_for
from monitor.codecs.binance_usdm import BinanceUsdmCodec
from monitor.codecs.bybit_v5 import BybitV5Codec
from monitor.codecs.recorded import Snapshot
from monitor.config import SourceConfig
from monitor.sources import Session, describe  # Session: the native protocol's, the base of the venues'

log = structlog.get_logger("perpwatch.venues")

BINANCE_WS = "wss://fstream.binance.com"
BINANCE_REST = "https://fapi.binance.com"
BYBIT_WS = "wss://stream.bybit.com/v5/public/linear"
BINANCE_MAX_STREAMS = 1024  # per combined-stream connection (venue limit)
_encode = msgspec.json.Encoder().encode


RestSnapshot = Snapshot  # a REST book snapshot to hand the codec, in order with the source's frames


class BinanceSession(Session):
    max_age_s = 23.5 * 3600  # the venue disconnects at 24 h; leave on our terms first

    def __init__(self, cfg: SourceConfig, codec: BinanceUsdmCodec, *, client: httpx.AsyncClient | None = None,
                 max_per_second: float = 5.0) -> None:
        super().__init__(cfg, codec)
        self.rest = cfg.rest_url or BINANCE_REST
        self.client = client
        self.min_interval = 1.0 / max_per_second  # REST weight: a depth snapshot costs 20 of 2400/min
        self._retry_at: dict[str, tuple[float, float]] = {}  # symbol -> (not before, last delay)
        self.fetched = 0
        self.failed = 0

    def url(self) -> str:
        return BinanceUsdmCodec.stream_url(self.cfg.url or BINANCE_WS, self.cfg.symbols)

    async def on_connect(self, ws: Any) -> None:
        self.codec.books.clear()  # a new stream: every book starts over from a snapshot

    async def resync(self, put) -> None:
        client = self.client or httpx.AsyncClient(timeout=10.0)
        try:
            while True:
                for symbol in sorted(self.codec.needs_snapshot()):
                    not_before, _ = self._retry_at.get(symbol, (0.0, 0.0))
                    if time.monotonic() < not_before:
                        continue
                    await self._fetch(client, symbol, put)
                    await asyncio.sleep(self.min_interval)
                await asyncio.sleep(0.1)
        finally:
            if self.client is None:
                await client.aclose()

    async def _fetch(self, client: httpx.AsyncClient, symbol: str, put) -> None:
        url = BinanceUsdmCodec.snapshot_url(self.rest, symbol)
        limit = self.cfg.max_frame_bytes
        try:
            async with client.stream("GET", url) as r:
                body = await _read_capped(r, limit) if r.status_code == 200 else None
            if body is not None:
                self.fetched += 1
                self._retry_at.pop(symbol, None)
                await put(RestSnapshot(symbol, body))
                # the snapshot may be applied after more diffs arrive: wait before asking again
                self._retry_at[symbol] = (time.monotonic() + 1.0, 0.0)
                return
            error = f"HTTP {r.status_code}" if r.status_code != 200 else f"body over max_frame_bytes ({limit})"
            retry_after = _retry_after(r.headers.get("Retry-After"))
        except httpx.HTTPError as e:
            error, retry_after = describe(e), None  # names a TLS certificate failure, not "ConnectError"
        self.failed += 1
        _, last = self._retry_at.get(symbol, (0.0, 0.0))
        delay = retry_after if retry_after is not None else min(30.0, max(1.0, last * 2))
        self._retry_at[symbol] = (time.monotonic() + delay, delay)
        log.warning("snapshot_failed", source=self.cfg.name, symbol=symbol, error=error, retry_in_s=delay)

    def apply(self, item: RestSnapshot) -> list:
        return self.codec.on_rest_snapshot(item.symbol, item.body)  # stamped with the venue's E: event time


class BybitSession(Session):
    ping_every_s = 20.0  # Bybit drops a public connection that sends no ping for ~20 s

    def url(self) -> str:
        return self.cfg.url or BYBIT_WS

    async def on_connect(self, ws: Any) -> None:
        for msg in BybitV5Codec.subscribe_messages(self.cfg.symbols):
            await ws.send(_encode(msg).decode())

    async def keepalive(self, ws: Any) -> None:
        ping = _encode(BybitV5Codec.ping_message()).decode()
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + self.ping_every_s
        asked: dict[str, float] = {}
        while True:
            await asyncio.sleep(1.0)
            now = loop.time()
            if now >= next_ping:
                await ws.send(ping)
                next_ping = now + self.ping_every_s
            for symbol in sorted(self.codec.needs_snapshot()):  # a gap: resubscribe => fresh snapshot
                if now - asked.get(symbol, -1e9) >= 5.0:
                    asked[symbol] = now
                    for msg in BybitV5Codec.resubscribe_messages(symbol):
                        await ws.send(_encode(msg).decode())


def make_session(cfg: SourceConfig) -> Session:
    """The session of a source: its venue's connect/subscribe/snapshot protocol around the
    codec of its format (``monitor.codecs.codec_for``)."""
    codec = codec_for(cfg.format)
    if cfg.format == "binance-usdm":
        return BinanceSession(cfg, codec)
    if cfg.format == "bybit-v5":
        return BybitSession(cfg, codec)
    return Session(cfg, codec)


async def _read_capped(r: httpx.Response, limit: int) -> bytes | None:
    """The body, or None once it exceeds ``limit`` bytes (read no further: bounded memory)."""
    body = bytearray()
    async for chunk in r.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
