"""Deliver: one receiver's notifications from the outbox to its notifier.

A ``Delivery`` reads only its receiver's due rows (oldest first, at most ``ROWS_PER_PASS``
a pass), waits for its rate limit (``min_gap`` seconds between sends: Slack gets one a
second unless configured otherwise), sends each with the notifier (bounded by the
receiver's ``timeout``), and records the answer: a 2xx marks the row sent; anything else
is retried with capped exponential backoff and full jitter, honouring ``Retry-After``; a
fatal answer (4xx but 429) is retried at the cap, never dropped. A row that failed
``max_attempts`` times (500), or first queued more than ``max_age_s`` (24 h) ago when it
fails again, is expired: marked with ``expired_at`` and its last error, counted and logged.

A row delivered but not yet marked (the store was locked when the 2xx came) is held in
``unmarked`` and marked before anything else is sent to that receiver, so a store fault
never makes a receiver hear the same body twice. With a ``deadline`` (loop time: the
drain), a send that would pass it is abandoned and its row stays pending for the next start.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Callable

import structlog

from alerts.notify import Result, describe, mask
from alerts.outbox import Outbox

log = structlog.get_logger("perpwatch.alerts")
BACKOFF_CAP_S = 300.0
MAX_ATTEMPTS = 500  # failed attempts of one row before it expires (~a day at the backoff cap)
MAX_AGE_S = 24 * 3600.0  # a row first queued longer ago than this expires at its next failure
ROWS_PER_PASS = 100


class Delivery:
    def __init__(self, receiver: str, notifier, outbox: Outbox, min_gap: float, rng: random.Random,
                 on_error: Callable[[str, BaseException], None],
                 stop_at: Callable[[], float | None] = lambda: None) -> None:
        self.receiver = receiver
        self.notifier = notifier  # None: rows of a receiver no longer configured (only failed/expired)
        self.outbox = outbox
        self.min_gap = min_gap
        self.rng = rng
        self.on_error = on_error
        self.stop_at = stop_at  # loop time by which a drain must end (None: not draining)
        self.max_attempts = MAX_ATTEMPTS
        self.max_age_s = MAX_AGE_S
        self.next_send = 0.0
        self.unmarked: tuple[int, bytes] | None = None  # a row delivered, not yet marked sent
        self.sent = self.failed = self.expired = 0

    async def due(self, deadline: float | None = None) -> int:
        """Send the receiver's due rows, oldest first; returns how many were delivered."""
        loop = asyncio.get_running_loop()
        if self.unmarked is not None:  # delivered before the store failed: mark it first
            row_id, body = self.unmarked
            await asyncio.to_thread(self.outbox.mark_sent, row_id, None, body)
            self.unmarked = None
        rows = await asyncio.to_thread(self.outbox.due, time.time(), ROWS_PER_PASS, self.receiver)
        done = 0
        for row_id, _, incident_id, body, attempts, created_at in rows:
            if deadline is None:  # the drain may have begun during this pass
                deadline = self.stop_at()
            wait = self.next_send - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.next_send = time.time() + self.min_gap
            try:
                send = self.notifier.send(body)
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        send.close()
                        break
                    result = await asyncio.wait_for(send, left)
                else:
                    result = await send
            except TimeoutError:
                if deadline is not None:
                    break  # the stop deadline, not the receiver's timeout: still pending
                result = Result("retryable", f"TimeoutError (receiver {self.receiver})")
            except Exception as e:  # a notifier bug costs this attempt, like a failed POST
                self.on_error(f"deliver:{self.receiver}", e)
                result = Result("retryable", describe(e, self.receiver))
            if result.outcome == "ok":
                self.sent += 1
                done += 1
                self.unmarked = (row_id, body)
                await asyncio.to_thread(self.outbox.mark_sent, row_id, None, body)
                self.unmarked = None
                log.info("notification_sent", receiver=self.receiver, incident_id=incident_id, attempts=attempts + 1)
                continue
            await self.fail(row_id, self.receiver, incident_id, attempts, created_at, result)
        return done

    async def fail(self, row_id: int, receiver: str, incident_id: str, attempts: int, created_at: float,
                   result: Result) -> None:
        """Record a failed attempt: retry later, or expire the row past its limits."""
        self.failed += 1
        error = mask(result.error)
        age = time.time() - created_at
        if attempts + 1 >= self.max_attempts or age > self.max_age_s:
            why = f"expired after {attempts + 1} attempts over {age:.0f} s: {error}"
            await asyncio.to_thread(self.outbox.mark_expired, row_id, why)
            self.expired += 1
            log.error("notification_expired", receiver=receiver, incident_id=incident_id, attempts=attempts + 1,
                      age_s=round(age), error=error)
            return
        delay = self.backoff(attempts, result.retry_after, fatal=result.outcome == "fatal")
        await asyncio.to_thread(self.outbox.mark_failed, row_id, time.time() + delay, error)
        log.warning("notification_failed", receiver=receiver, incident_id=incident_id, error=error,
                    outcome=result.outcome, retry_in_s=round(delay, 2))

    def backoff(self, attempts: int, retry_after: float | None, fatal: bool) -> float:
        if retry_after is not None:
            return min(retry_after, 3600.0)
        if fatal:
            return BACKOFF_CAP_S
        return max(0.25, self.rng.uniform(0, min(BACKOFF_CAP_S, 0.5 * 2 ** attempts)))
