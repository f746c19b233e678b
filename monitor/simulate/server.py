"""Serves a ``Market`` over websockets on 127.0.0.1, in scaled real time.

Each step's events go out as one text frame (a JSON array) to every client; a new
client first gets a book snapshot per symbol. Each client has a bounded queue: a client
that falls ``max_queue`` frames behind is disconnected (it reconnects and resyncs from
snapshots), so a slow reader never makes the server's memory grow.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import IO

import msgspec
from websockets.asyncio.server import ServerConnection, serve

from monitor.simulate.market import Market

_encode = msgspec.json.Encoder().encode


class FeedServer:
    def __init__(self, market: Market, host: str = "127.0.0.1", port: int = 0, speed: float = 1.0,
                 max_queue: int = 2000, record: IO[bytes] | None = None) -> None:
        self.market = market
        self.host = host
        self.port = port
        self.speed = speed  # 1.0 = real time; 0 = as fast as possible
        self.max_queue = max_queue
        self.record = record  # optional: every frame, one per line (a replay file)
        self.frames = 0
        self.events = 0
        self.slow_clients = 0
        self._clients: dict[ServerConnection, asyncio.Queue[bytes | None]] = {}
        self._server = None
        self._ticker: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/feed"

    async def start(self) -> int:
        self._server = await serve(self._client, self.host, self.port, max_size=None, compression=None)
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = asyncio.create_task(self._tick_forever(), name="simulator")
        return self.port

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for queue in self._clients.values():  # wake every handler: None means "stop"
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _client(self, ws: ServerConnection) -> None:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(self.max_queue)
        await ws.send(_encode(self.market.snapshots()).decode())
        self._clients[ws] = queue
        try:
            while (frame := await queue.get()) is not None:
                await ws.send(frame.decode())
        except Exception:  # the client went away; nothing to do but forget it
            pass
        finally:
            self._clients.pop(ws, None)

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        step_s = self.market.step_ms / 1000.0
        n = 0
        while True:
            events = self.market.step()
            n += 1
            if events:
                self._broadcast(_encode(events), len(events))
            if self.speed > 0:
                delay = start + n * step_s / self.speed - loop.time()
                await asyncio.sleep(max(delay, 0.0))
            elif n % 20 == 0:
                await asyncio.sleep(0)

    def _broadcast(self, frame: bytes, n_events: int) -> None:
        self.frames += 1
        self.events += n_events
        if self.record is not None:
            self.record.write(frame + b"\n")
        for ws, queue in list(self._clients.items()):
            try:
                queue.put_nowait(frame)
            except asyncio.QueueFull:
                self.slow_clients += 1
                self._clients.pop(ws, None)
                asyncio.ensure_future(ws.close(1013, "too slow"))


def record_market(market: Market, seconds: float, path: str | Path) -> int:
    """Write ``seconds`` of the market to a replay file (snapshots first); returns frames."""
    with open(path, "wb") as f:
        f.write(_encode(market.snapshots()) + b"\n")
        n = 1
        for events in market.run(seconds):
            if events:
                f.write(_encode(events) + b"\n")
                n += 1
    return n
