"""Notifiers: one payload format and one HTTP call each; they return ok/retryable/fatal
and never put a secret URL or key into an error message."""

from __future__ import annotations

from typing import Literal, NamedTuple

import httpx

Outcome = Literal["ok", "retryable", "fatal"]


class Result(NamedTuple):
    outcome: Outcome
    error: str = ""
    retry_after: float | None = None


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
    """POST and classify; errors name the receiver, never its URL."""
    try:
        r = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as e:
        return Result("retryable", f"{type(e).__name__} (receiver {name})")
    outcome = classify_status(r.status_code)
    if outcome == "ok":
        return Result("ok")
    return Result(outcome, f"HTTP {r.status_code} (receiver {name})", retry_after(r.headers.get("Retry-After")))
