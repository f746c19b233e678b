"""Notifiers: one payload format and one HTTP call each; they return ok/retryable/fatal
and never put a secret URL or key into an error message."""

from __future__ import annotations

from typing import Literal, NamedTuple

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
