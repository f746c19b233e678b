"""Notifiers: one payload format and one HTTP call each; they return ok/retryable/fatal
and never put a secret URL or key into an error message.

Receiver URLs (a Slack incoming-webhook URL *is* the credential) and signing secrets are
registered with :func:`register_secret` when a notifier is built; :func:`mask` removes
them, and reduces any other URL to ``scheme://host/…``, in every error text the alerts
package logs, stores (``outbox.last_error``) or reports (``status()``).
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

import httpx

Outcome = Literal["ok", "retryable", "fatal"]
MAX_SECRETS = 256  # registered secrets (a few per receiver); beyond it the oldest go
MIN_SECRET_LEN = 6  # shorter fragments ("/hook") are left to the URL pattern
_secrets: dict[str, None] = {}  # insertion-ordered set
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]{0,15})://(?:[^/\s@'\"<>]*@)?(?P<host>[^/\s?#'\"<>]*)"
                  r"[^\s'\"<>]*")


class Result(NamedTuple):
    outcome: Outcome
    error: str = ""
    retry_after: float | None = None


def register_secret(value: str | None) -> None:
    """Remember a secret (a URL, its path and query, a key) so that :func:`mask` hides it."""
    if not value:
        return
    parts = [value]
    m = _URL.fullmatch(value)
    if m is not None:
        rest = value[m.end("host"):]
        parts.append(rest)
        parts.extend(p for p in re.split(r"[/?&=#]", rest) if p)
    for p in parts:
        if len(p) >= MIN_SECRET_LEN:
            _secrets.pop(p, None)
            _secrets[p] = None
    while len(_secrets) > MAX_SECRETS:
        del _secrets[next(iter(_secrets))]


def mask(text: str, limit: int = 300) -> str:
    """``text`` without registered secrets and with every URL cut to ``scheme://host/…``."""
    text = _URL.sub(lambda m: f"{m['scheme']}://{m['host']}/…", str(text))
    for s in sorted(_secrets, key=len, reverse=True):
        if s in text:
            text = text.replace(s, "…")
    return text[:limit]


def describe(e: BaseException, name: str) -> str:
    """An exception as one masked line naming the receiver (a TLS failure says so)."""
    detail = mask(str(e), 200)
    return f"{type(e).__name__}{': ' + detail if detail else ''} (receiver {name})"


def classify_status(status: int) -> Outcome:
    if 200 <= status < 300:
        return "ok"
    if status == 429 or status >= 500 or status == 408:
        return "retryable"
    return "fatal"


def retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


async def post(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], name: str) -> Result:
    """POST and classify; errors name the receiver, never its URL. A bad URL or a
    transport failure of any kind is a retryable failure of this row, not of the task."""
    try:
        r = await client.post(url, content=body, headers=headers)
    except (httpx.HTTPError, httpx.InvalidURL, OSError, ValueError) as e:
        return Result("retryable", describe(e, name))
    outcome = classify_status(r.status_code)
    if outcome == "ok":
        return Result("ok")
    return Result(outcome, f"HTTP {r.status_code} (receiver {name})", retry_after(r.headers.get("Retry-After")))
