"""The daemon's alert sink: incidents (decided by the pipeline, stored by the daemon) ->
mute -> routes -> outbox -> receivers.

The engine correlates nothing and writes neither anomalies nor incidents: the pure
pipeline places every anomaly in an incident on event time (``alerts/correlate.py``) and
the daemon stores both through its one writer, then hands the engine the stored
anomalies with the incidents they changed (``handle``). The engine keeps the open ones,
mutes, routes and delivers.

Everything a receiver will get is written to the outbox (SQLite, beside the anomaly
store) before any send, and marked sent only after a 2xx, so nothing is lost to a
receiver that is down or to a restart: the delivery loop resumes from the table.
Retries use capped exponential backoff with full jitter and honour ``Retry-After``;
a fatal answer (4xx but 429) is retried at the cap, never dropped. Slack gets at most
one message a second per receiver unless configured otherwise.

Tasks, one per receiver plus one for the timers, each supervised. Receivers are
independent: each has its own delivery task reading only its own due rows, its own rate
limit and its own backoff, so a receiver that hangs until its ``timeout`` (5 s by
default) or is down never delays another's notifications.

Failures cost the row or the pass, never the task: every task runs under the daemon's
one supervisor (``monitor.ops.supervise``): an exception in one iteration (the store
locked or failing, a notifier bug) is counted in ``errors`` by task (shown in
``status()``), logged with a masked sample at most once a minute per task and kind, and
the task goes on after a short backoff (0.1 s doubling up to 5 s). Nothing is lost: a row stays pending until it is marked sent;
a row delivered but not yet marked (the store was locked) is marked before anything else
is sent to that receiver; a route's timer advances only once its notification is in the
outbox.

Per-row limits: each POST is bounded by the receiver's ``timeout``. A row that failed
``MAX_ATTEMPTS`` times, or whose first attempt is older than ``MAX_AGE_S`` (24 h) when
it fails again, is expired: marked with ``expired_at`` and its last error, counted in
``expired`` and logged. With the backoff capped at 5 min that is a day of retrying a
dead receiver; a later state of the incident gets a new row.

Bounds: open incidents as the pipeline's correlator bounds them (``MAX_OPEN``); at most
one delivered-but-unmarked row per receiver; ``errors`` and ``last_error`` have one key
per task (``deliver:<receiver>``, ``timers``, ``handle``, ``start``, ``drain``); error
samples are masked and cut to 200 characters. Each delivery pass reads at most 100 due
rows of its receiver. ``status()`` never touches SQLite (a scrape of /metrics must not
wait on a locked store): the outbox counts are refreshed by the timers task.

Restart: open incidents come back with the pipeline's checkpoint (the daemon closes
those the store has as firing that the checkpoint does not hold: status ``abandoned``,
see ``alerts/incidents.py``); route timers come back from this engine's ``snapshot``. At
``start`` the engine reconciles the restored route timers with the outbox:
when the newest row of an (incident, receiver) already carries the incident's current
body, the timer counts it as sent, so a checkpoint older than the last send does not
send the same body twice.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import msgspec
import structlog

from alerts.correlate import Incident
from alerts.notify import Result, describe, mask
from alerts.notify.log import LogNotifier
from alerts.notify.slack import SlackNotifier
from alerts.notify.webhook import WebhookNotifier
from alerts.outbox import Outbox
from alerts.route import RouteState, decide, matches
from alerts.mute import Muter
from alerts.silence import POLL_S, SilenceTable
from monitor.config import Config, ReceiverConfig, receiver_url, resolve_secret
from monitor.events import Anomaly
from monitor.ops.supervise import Stopped, Supervisor

log = structlog.get_logger("perpwatch.alerts")
_encode = msgspec.json.Encoder().encode
BACKOFF_CAP_S = 300.0
MAX_ATTEMPTS = 500  # failed attempts of one row before it expires (~a day at the backoff cap)
MAX_AGE_S = 24 * 3600.0  # a row first queued longer ago than this expires at its next failure
ORPHAN_SWEEP_S = 60.0  # rows of receivers no longer configured: looked at this often


def make_notifier(r: ReceiverConfig, index: int):
    if r.kind == "log":
        return LogNotifier(r.name)
    url = receiver_url(r, index)
    if r.kind == "slack":
        return SlackNotifier(r.name, url, r.timeout.seconds)
    secret = resolve_secret(f"alerts.receivers[{index}].secret", r.secret_env, r.secret_file)
    return WebhookNotifier(r.name, url, secret, r.timeout.seconds)


def payload(inc: Incident) -> bytes:
    """The CONTRACT section 3 body for an incident's current state."""
    return _encode({
        "version": "1",
        "incident_id": inc.id,
        "status": "firing",
        "severity": inc.severity,
        "title": inc.title(),
        "symbols": sorted(inc.symbols),
        "accounts": sorted(inc.accounts),
        "anomalies": [msgspec.structs.asdict(a) for a in inc.anomalies],
    })


class AlertEngine:
    def __init__(self, cfg: Config, open_incidents: list[Incident] = (), rng: random.Random | None = None) -> None:
        """``open_incidents``: those a restored pipeline holds open (a restart)."""
        a = cfg.alerts
        self.routes = a.routes
        self.open: dict[str, Incident] = {i.id: i for i in open_incidents}  # as the pipeline last told us
        self.notifiers = {r.name: make_notifier(r, i) for i, r in enumerate(a.receivers)}
        self.min_gap = {r.name: 1.0 / (r.max_per_second or (1.0 if r.kind == "slack" else 1e9))
                        for r in a.receivers}
        self.outbox = Outbox(cfg.store.path)
        self.silence_table = SilenceTable(cfg.store.path)
        self.muter = Muter(self.silence_table.all())
        self._silences_read = time.monotonic()
        self.muted = 0  # route passes skipped for a silence or an inhibition
        self._quiet: dict[str, str] = {}  # incident id -> why it is muted (logged once per reason)
        self._route_state: dict[tuple[int, str], RouteState] = {}
        self._next_send: dict[str, float] = {}
        self._rng = rng or random.Random()
        self._tasks: list[asyncio.Task] = []  # the timers task
        self._delivery: dict[str, asyncio.Task] = {}  # one delivery task per receiver
        self._stop_at: float | None = None  # loop time by which the drain must be done
        self._wake = {name: asyncio.Event() for name in self.notifiers}
        self._route_lock = asyncio.Lock()
        self.max_attempts = MAX_ATTEMPTS
        self.max_age_s = MAX_AGE_S
        self.sent = 0
        self.failed = 0
        self.expired = 0
        # failed iterations by task (deliver:<receiver>, timers, handle, start, drain) and their samples
        self.supervisor = Supervisor()
        self._outbox_counts: tuple[int, float] = (0, 0.0)  # (pending, oldest age s), refreshed by the timers
        self._unmarked: dict[str, tuple[int, bytes]] = {}  # receiver -> row delivered, not yet marked sent
        self._orphans_checked = 0.0

    # -- the sink protocol ------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._settle_restart)
        except Exception as e:  # the store is failing: the next start settles it
            self._error("start", e)
        run, stop_at = self.supervisor.run, lambda: self._stop_at
        self._delivery = {name: asyncio.create_task(run(f"deliver:{name}", self._deliver_step, name, repeat=True,
                                                        stop_at=stop_at), name=f"alerts:deliver:{name}")
                          for name in self.notifiers}
        self._tasks = [asyncio.create_task(run("timers", self._timers_step, repeat=True, stop_at=stop_at),
                                           name="alerts:timers")]

    async def handle(self, anomalies: list[Anomaly], incidents: list[Incident] = ()) -> None:
        """Stored anomalies and the incidents they changed (opened, grown, resolved, merged):
        keep the open ones, then route. Never raises for a failing store (the next pass
        retries)."""
        unseen_closed = []
        for inc in incidents:
            if inc.status == "firing":
                self.open[inc.id] = inc
            elif self.open.pop(inc.id, None) is None and inc.status == "resolved":
                unseen_closed.append(inc)  # opened and resolved between two flushes (a fast replay of a gap)
        try:
            await self._route(closed=unseen_closed)
        except Exception as e:
            self._error("handle", e)

    async def drain(self, deadline: float) -> None:
        """Final routing, then each receiver's task delivers what is due until nothing is or
        ``deadline`` (loop time) is near. A POST in flight is let finish (its answer is
        recorded, so it is not sent again at the next start) unless the deadline comes first."""
        loop = asyncio.get_running_loop()
        self._stop_at = deadline - 0.2
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self._route()
        except Exception as e:
            self._error("drain", e)
        if self._delivery:
            for wake in self._wake.values():
                wake.set()
            tasks = list(self._delivery.values())
            _, late = await asyncio.wait(tasks, timeout=max(0.0, self._stop_at - loop.time()))
            for t in late:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        else:  # never started
            await asyncio.gather(*(self._drain_receiver(name, self._stop_at) for name in self.notifiers))
        try:
            pending = await asyncio.to_thread(self.outbox.pending)
        except Exception as e:
            self._error("drain", e)
            pending = None
        if pending:
            log.warning("notifications_pending_at_stop", pending=pending, note="sent after the next start")
        for n in self.notifiers.values():
            await n.aclose()
        self.outbox.close()
        self.silence_table.close()

    async def _drain_receiver(self, name: str, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            try:
                if await self._deliver_due(name, deadline) == 0:
                    return
            except Exception as e:
                self._error(f"deliver:{name}", e)
                return

    # -- checkpoint -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Routing timers of the open incidents (the incidents ride in the pipeline's
        checkpoint): a restart does not re-send what was already sent."""
        return {"routes": list(self.routes), "route_state": self._route_state}

    def restore(self, snap: dict[str, Any]) -> None:
        if snap.get("routes") == list(self.routes):  # timers belong to routes by position
            self._route_state = {k: v for k, v in snap.get("route_state", {}).items() if k[1] in self.open}
        log.info("route_timers_restored", open=len(self.open), route_timers=len(self._route_state))

    def _settle_restart(self) -> None:
        """At start (in a thread): count as sent what the outbox shows was already queued or
        sent for a restored incident."""
        now = time.time()
        reconciled = 0
        for inc in list(self.open.values()):
            body = None
            for i, route in enumerate(self.routes):
                if not matches(route, inc.severity, inc.kinds, inc.symbols):
                    continue
                latest = self.outbox.latest(route.receiver, inc.id)
                if latest is not None:
                    body = body or payload(inc)
                    st = self._route_state.get((i, inc.id))
                    if latest[0] == body and (st is None or st.sent_version != inc.version):
                        if st is None:
                            st = self._route_state[(i, inc.id)] = RouteState(now)
                        st.last_sent = min(now, latest[2] or latest[1])
                        st.sent_version = inc.version
                        reconciled += 1
                if not route.continue_:
                    break
        if reconciled:
            log.info("route_timers_reconciled", count=reconciled, note="bodies already in the outbox are not re-sent")

    # -- supervision ------------------------------------------------------------------------
    @property
    def errors(self) -> Counter[str]:
        return self.supervisor.errors

    @property
    def last_error(self) -> dict[str, str]:
        return self.supervisor.last_error

    def _error(self, task: str, e: BaseException) -> None:
        self.supervisor.failed(task, e)

    # -- routing ----------------------------------------------------------------------------
    async def _route(self, now: float | None = None, closed: list[Incident] = ()) -> None:
        """One routing pass over the open incidents. ``closed``: incidents this engine never
        saw open (they opened and resolved between two flushes): each matching route gets
        them once, now, whatever its timers say, so no incident goes unsaid."""
        async with self._route_lock:  # one pass at a time: two would queue the same update
            await self._route_locked(time.time() if now is None else now, closed)

    async def _route_locked(self, now: float, closed: list[Incident] = ()) -> None:
        batch: list[tuple[str, str, bytes]] = []
        advance: list[tuple[RouteState, int]] = []
        live = set()
        if time.monotonic() - self._silences_read >= POLL_S:
            self.muter.silences = await asyncio.to_thread(self.silence_table.all)
            self._silences_read = time.monotonic()
        incidents = list(self.open.values())
        for inc in incidents:
            live.add(inc.id)
            why_quiet = self.muter.reason(inc, incidents, now)
            if why_quiet is not None:
                self.muted += 1
                if self._quiet.get(inc.id) != why_quiet:
                    self._quiet[inc.id] = why_quiet
                    log.info("incident_muted", incident_id=inc.id, reason=why_quiet)
                continue
            self._quiet.pop(inc.id, None)
            body = None
            for i, route in enumerate(self.routes):
                if not matches(route, inc.severity, inc.kinds, inc.symbols):
                    continue
                st = self._route_state.get((i, inc.id))
                if st is None:
                    st = self._route_state[(i, inc.id)] = RouteState(now)
                why = decide(route, st, inc.version, now)
                if why is not None:
                    body = body or payload(inc)
                    batch.append((route.receiver, inc.id, body))
                    advance.append((st, inc.version))
                if not route.continue_:
                    break
        for key in [k for k in self._route_state if k[1] not in live]:  # resolved incidents
            del self._route_state[key]
        for key in [k for k in self._quiet if k not in live]:
            del self._quiet[key]
        for inc in closed:
            if self.muter.reason(inc, incidents, now) is not None:
                continue
            body = None
            for route in self.routes:
                if matches(route, inc.severity, inc.kinds, inc.symbols):
                    body = body or payload(inc)
                    batch.append((route.receiver, inc.id, body))
                    if not route.continue_:
                        break
        if batch:
            await asyncio.to_thread(self._enqueue, batch)  # raises: timers stay, the next pass retries
            for st, version in advance:
                st.last_sent, st.sent_version = now, version
            for receiver in {b[0] for b in batch}:
                if receiver in self._wake:
                    self._wake[receiver].set()

    def _enqueue(self, batch: list[tuple[str, str, bytes]]) -> None:
        for receiver, incident_id, body in batch:
            self.outbox.enqueue(receiver, incident_id, body)

    async def _timers_step(self) -> None:
        """group_wait and repeat_interval fire without new anomalies; the outbox counts that
        status() reports are refreshed here, off the scrape thread."""
        await asyncio.sleep(0.5)
        try:
            await self._route()
        finally:  # the counts go on even when routing fails
            self._outbox_counts = await asyncio.to_thread(self._read_outbox_counts)
        if time.monotonic() - self._orphans_checked >= ORPHAN_SWEEP_S:
            await self._sweep_orphans()
            self._orphans_checked = time.monotonic()

    def _read_outbox_counts(self) -> tuple[int, float]:
        return self.outbox.pending(), self.outbox.oldest_pending_age()

    async def _sweep_orphans(self) -> None:
        """Rows of receivers that left the config: kept (the receiver may come back), retried
        rarely, expired by the same policy."""
        rows = await asyncio.to_thread(self.outbox.due, time.time(), 100, None, list(self.notifiers))
        for row_id, receiver, incident_id, _, attempts, created_at in rows:
            await self._failed(row_id, receiver, incident_id, attempts, created_at,
                               Result("fatal", f"no such receiver {receiver}"))

    # -- delivery ---------------------------------------------------------------------------
    async def _deliver_step(self, receiver: str) -> None:
        if self._stop_at is not None:  # draining: until nothing is due or the deadline
            if asyncio.get_running_loop().time() >= self._stop_at or \
                    await self._deliver_due(receiver, self._stop_at) == 0:
                raise Stopped
            return
        n = await self._deliver_due(receiver)
        if n == 0:
            wake = self._wake[receiver]
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), 0.25)
            except TimeoutError:
                pass

    async def _deliver_due(self, receiver: str, deadline: float | None = None) -> int:
        """Send one receiver's due rows, oldest first; returns how many were delivered.
        With ``deadline`` (loop time), a send that would pass it is abandoned (the row
        stays pending for the next start)."""
        notifier = self.notifiers[receiver]
        loop = asyncio.get_running_loop()
        if receiver in self._unmarked:  # delivered before the store failed: mark it first
            row_id, body = self._unmarked[receiver]
            await asyncio.to_thread(self.outbox.mark_sent, row_id, None, body)
            del self._unmarked[receiver]
        rows = await asyncio.to_thread(self.outbox.due, time.time(), 100, receiver)
        done = 0
        for row_id, _, incident_id, body, attempts, created_at in rows:
            if deadline is None and self._stop_at is not None:  # the drain began during this pass
                deadline = self._stop_at
            wait = self._next_send.get(receiver, 0.0) - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._next_send[receiver] = time.time() + self.min_gap[receiver]
            try:
                send = notifier.send(body)
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
                result = Result("retryable", f"TimeoutError (receiver {receiver})")
            except Exception as e:  # a notifier bug costs this attempt, like a failed POST
                self._error(f"deliver:{receiver}", e)
                result = Result("retryable", describe(e, receiver))
            if result.outcome == "ok":
                self.sent += 1
                done += 1
                self._unmarked[receiver] = (row_id, body)
                await asyncio.to_thread(self.outbox.mark_sent, row_id, None, body)
                del self._unmarked[receiver]
                log.info("notification_sent", receiver=receiver, incident_id=incident_id, attempts=attempts + 1)
                continue
            await self._failed(row_id, receiver, incident_id, attempts, created_at, result)
        return done

    async def _failed(self, row_id: int, receiver: str, incident_id: str, attempts: int, created_at: float,
                      result: Result) -> None:
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
        delay = self._backoff(attempts, result.retry_after, fatal=result.outcome == "fatal")
        await asyncio.to_thread(self.outbox.mark_failed, row_id, time.time() + delay, error)
        log.warning("notification_failed", receiver=receiver, incident_id=incident_id, error=error,
                    outcome=result.outcome, retry_in_s=round(delay, 2))

    def _backoff(self, attempts: int, retry_after: float | None, fatal: bool) -> float:
        if retry_after is not None:
            return min(retry_after, 3600.0)
        if fatal:
            return BACKOFF_CAP_S
        return max(0.25, self._rng.uniform(0, min(BACKOFF_CAP_S, 0.5 * 2 ** attempts)))

    def status(self) -> dict[str, Any]:
        """Counters only, no SQLite: safe from the /metrics thread while the store is locked."""
        pending, oldest = self._outbox_counts
        return {"open_incidents": len(self.open), "sent": self.sent, "failed": self.failed,
                "expired": self.expired, "errors": dict(self.errors), "last_error": dict(self.last_error),
                "pending": pending, "oldest_pending_s": oldest}
