"""One supervisor for every shell task (the daemon's sources, processor and flusher; the
alert engine's delivery and timer tasks): a failure costs the iteration, never the daemon.

``Supervisor.run(task, step)`` awaits ``step()``; with ``repeat`` it awaits it again and
again (one iteration each), else it returns when ``step`` returns. An exception (a bug or a
fault the step did not handle itself) is ``failed``: counted in ``errors`` by task, its
masked sample kept in ``last_error`` (secrets and URL paths cut, 200 characters), logged
as ``task_error`` with where it was raised at most ``per_minute`` times per task and
exception type, and the step runs again after a backoff doubling from 0.1 s to 5 s while
it keeps failing. ``Stopped`` raised by a step ends its task quietly; with ``stop_at`` (a
callable giving a loop-time deadline, or None) a task whose next backoff would pass the
deadline ends instead of sleeping. Cancellation passes through. Bounds: one ``errors``
and ``last_error`` key per task name; the log sampler keeps at most 1,000 keys.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any, Awaitable, Callable

import structlog

from alerts.notify import mask
from monitor.logs import RateLimitedSamples

log = structlog.get_logger("perpwatch.tasks")
BACKOFF_S, BACKOFF_MAX_S = 0.1, 5.0


class Stopped(Exception):
    """Raised by a step: its task is done (a drain finished)."""


def backoff(failures: int) -> float:
    """The pause after the ``failures``-th failure in a row (0.1 s doubling, at most 5 s).

    >>> [backoff(n) for n in (1, 2, 3, 7, 40)]
    [0.1, 0.2, 0.4, 5.0, 5.0]
    """
    return min(BACKOFF_MAX_S, BACKOFF_S * 2 ** min(failures - 1, 16))


class Supervisor:
    def __init__(self, per_minute: int = 1) -> None:
        self.errors: Counter[str] = Counter()  # failed iterations by task
        self.last_error: dict[str, str] = {}  # task -> masked sample of its latest error
        self._samples = RateLimitedSamples(per_minute=per_minute)

    def failed(self, task: str, e: BaseException) -> None:
        """Count and (sampled) log a failure of ``task``; for code that handles its own loop."""
        self.errors[task] += 1
        sample = mask(f"{type(e).__name__}: {e}", 200)
        self.last_error[task] = sample
        if self._samples.allow(f"{task}:{type(e).__name__}"):
            where = None
            if e.__traceback__ is not None:
                import traceback

                f = traceback.extract_tb(e.__traceback__)[-1]
                where = f"{f.filename}:{f.lineno} in {f.name}"
            log.error("task_error", task=task, error=sample, errors_total=self.errors[task], where=where,
                      note="counted; the task goes on after a backoff")

    async def run(self, task: str, step: Callable[..., Awaitable[Any]], *args: Any, repeat: bool = False,
                  stop_at: Callable[[], float | None] | None = None) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            try:
                await step(*args)
                failures = 0
                if not repeat:
                    return
            except asyncio.CancelledError:
                raise
            except Stopped:
                return
            except Exception as e:
                failures += 1
                self.failed(task, e)
                pause = backoff(failures)
                deadline = stop_at() if stop_at is not None else None
                if deadline is not None and loop.time() + pause >= deadline:
                    return
                await asyncio.sleep(pause)
