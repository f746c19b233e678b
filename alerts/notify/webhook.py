"""The contract's webhook (CONTRACT section 3): JSON body, optional HMAC-SHA256 signature.

``X-Perpwatch-Signature: t=<unix seconds>,v1=<hex>`` with hex = HMAC-SHA256(secret,
``f"{t}."`` + raw body). The body is signed at send time, so a retry carries a fresh ``t``.

>>> sign(b"k", b'{"a":1}', 1700000000)
't=1700000000,v1=1b6ad1bc9bf48c52ce01939866d5877c6cc4e87ddad27e16673cb8c4964394a3'
"""

from __future__ import annotations

import hashlib
import hmac
import time

import httpx

from alerts.notify import Result, post, register_secret


def sign(secret: bytes, body: bytes, t: int) -> str:
    digest = hmac.new(secret, f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


class WebhookNotifier:
    def __init__(self, name: str, url: str, secret: str | None, timeout: float,
                 client: httpx.AsyncClient | None = None) -> None:
        self.name = name
        self._url = url  # a secret too: never logged
        self._secret = secret.encode() if secret else None
        register_secret(url)
        register_secret(secret)
        self.client = client or httpx.AsyncClient(timeout=timeout, verify=True)

    async def send(self, body: bytes) -> Result:
        headers = {"Content-Type": "application/json", "User-Agent": "perpwatch"}
        if self._secret is not None:
            headers["X-Perpwatch-Signature"] = sign(self._secret, body, int(time.time()))
        return await post(self.client, self._url, body, headers, self.name)

    async def aclose(self) -> None:
        await self.client.aclose()
