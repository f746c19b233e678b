"""The demo's risk team: a webhook endpoint on 127.0.0.1 that checks every signature.

It speaks just enough HTTP/1.1 for a webhook client (keep-alive, ``Content-Length``
bodies), answers 200, verifies ``X-Perpwatch-Signature`` against the shared secret and
keeps the latest state of each incident it has heard of (at most ``keep``; the oldest
heard-of goes first). It is what a receiver of CONTRACT section 3 sees, live.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections import OrderedDict
from typing import Any

from alerts.notify.webhook import sign

MAX_BODY = 4 * 1024 * 1024


def signature_ok(secret: bytes, header: str | None, body: bytes) -> bool:
    """The header is what ``alerts.notify.webhook.sign`` makes of this body at its ``t``."""
    t = header.partition("t=")[2].partition(",")[0] if header else ""
    return t.isdigit() and hmac.compare_digest(sign(secret, body, int(t)), header)


class HeardIncident:
    __slots__ = ("payload", "posts", "first_wall", "last_wall")

    def __init__(self, payload: dict[str, Any], now: float) -> None:
        self.payload = payload
        self.posts = 0
        self.first_wall = now
        self.last_wall = now


class WebhookReceiver:
    def __init__(self, secret: bytes, host: str = "127.0.0.1", keep: int = 200) -> None:
        self.secret = secret
        self.host = host
        self.port = 0
        self.keep = keep
        self.incidents: OrderedDict[str, HeardIncident] = OrderedDict()
        self.posts = 0
        self.verified = 0
        self.rejected = 0  # bad signature or unreadable body: answered 400
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                length = int(headers.get("content-length", "0"))
                if length > MAX_BODY:
                    break
                body = await reader.readexactly(length)
                status = self.receive(headers.get("x-perpwatch-signature"), body)
                writer.write(f"HTTP/1.1 {status} {'OK' if status == 200 else 'Bad Request'}\r\n"
                             "Content-Length: 0\r\n\r\n".encode())
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    def receive(self, signature: str | None, body: bytes) -> int:
        """One POST: 200 when signed right and readable, else 400."""
        self.posts += 1
        try:
            payload = json.loads(body)
            incident_id = payload["incident_id"]
        except (ValueError, KeyError, TypeError):
            self.rejected += 1
            return 400
        if not signature_ok(self.secret, signature, body):
            self.rejected += 1
            return 400
        self.verified += 1
        now = time.monotonic()
        heard = self.incidents.get(incident_id)
        if heard is None:
            heard = self.incidents[incident_id] = HeardIncident(payload, now)
            if len(self.incidents) > self.keep:
                self.incidents.popitem(last=False)
        heard.payload, heard.last_wall = payload, now
        heard.posts += 1
        return 200
