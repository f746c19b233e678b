"""The daemon's alert sink, a thin facade over Alertmanager's stages: incidents (decided by
the pipeline, stored by the daemon) -> dispatch (mute -> match -> timers -> payload,
``alerts/dispatch.py``) -> outbox (``alerts/outbox.py``) -> deliver (rate limit, send,
backoff, expiry, ``alerts/deliver.py``) -> notifiers (``alerts/notify/``).

The engine correlates nothing and writes neither anomalies nor incidents: the pure
pipeline places every anomaly in an incident on event time (``alerts/correlate.py``) and
the daemon stores both through its one writer, then hands the engine the stored
anomalies with the incidents they changed (``handle``). The engine keeps the open ones,
mutes, routes and delivers.

Everything a receiver will get is written to the outbox (SQLite, beside the anomaly
store) before any send, and marked sent only after a 2xx, so nothing is lost to a
receiver that is down or to a restart: the delivery loop resumes from the table.

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

Per-row limits (``alerts/deliver.py``): each POST is bounded by the receiver's
``timeout``; a row is expired after 500 attempts or 24 h, counted in ``expired`` and
logged: with the backoff capped at 5 min that is a day of retrying a dead receiver; a
later state of the incident gets a new row.

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

import structlog

from alerts.correlate import Incident
from alerts.deliver import Delivery
from alerts.dispatch import Dispatcher, payload
from alerts.mute import Muter
from alerts.notify import Result
from alerts.notify.alertmanager import AlertmanagerNotifier
from alerts.notify.log import LogNotifier
from alerts.notify.pagerduty import PagerDutyNotifier
from alerts.notify.slack import SlackNotifier
from alerts.notify.webhook import WebhookNotifier
from alerts.outbox import Outbox
from alerts.silence import POLL_S, SilenceTable
from monitor.config import Config, ReceiverConfig, receiver_url, resolve_secret
from monitor.events import Anomaly
from monitor.ops.supervise import Stopped, Supervisor

log = structlog.get_logger("perpwatch.alerts")
ORPHAN_SWEEP_S = 60.0  # rows of receivers no longer configured: looked at this often


def make_notifier(r: ReceiverConfig, index: int):
    if r.kind == "log":
        return LogNotifier(r.name)
    url = receiver_url(r, index)
    if r.kind == "slack":
        return SlackNotifier(r.name, url, r.timeout.seconds)
    if r.kind == "alertmanager":
        return AlertmanagerNotifier(r.name, url, r.timeout.seconds)
    secret = resolve_secret(f"alerts.receivers[{index}].secret", r.secret_env, r.secret_file)
    if r.kind == "pagerduty":
        return PagerDutyNotifier(r.name, url, secret, r.timeout.seconds)
    return WebhookNotifier(r.name, url, secret, r.timeout.seconds)


async def send_test(cfg: Config, receiver: str, now_ms: int | None = None) -> Result:
    """Send one sample incident straight to a configured receiver (``perpwatch alert test``):
    the payload its routes would carry, marked TEST, through the receiver's own notifier,
    bypassing the outbox and routes. ValueError when no receiver has that name."""
    from alerts.correlate import Incident

    names = [r.name for r in cfg.alerts.receivers]
    if receiver not in names:
        raise ValueError(f"no receiver named {receiver!r} (have: {', '.join(names) or 'none'})")
    i = names.index(receiver)
    notifier = make_notifier(cfg.alerts.receivers[i], i)
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    a = Anomaly.make("test", now_ms, 1.0, "info", symbol="TEST-PERP",
                     detail={"note": "perpwatch alert test: a sample notification, nothing happened"})
    inc = Incident(a)
    inc.add(a, "opened")
    runbook = next((r.runbook_url for r in cfg.alerts.routes if r.receiver == receiver and r.runbook_url), None)
    try:
        return await notifier.send(payload(inc, notification="test", sequence=1, runbook_url=runbook))
    finally:
        await notifier.aclose()


class AlertEngine:
    def __init__(self, cfg: Config, open_incidents: list[Incident] = (), rng: random.Random | None = None) -> None:
        """``open_incidents``: those a restored pipeline holds open (a restart)."""
        a = cfg.alerts
        self.routes = a.routes
        self.open: dict[str, Incident] = {i.id: i for i in open_incidents}  # as the pipeline last told us
        self.notifiers = {r.name: make_notifier(r, i) for i, r in enumerate(a.receivers)}
        self.outbox = Outbox(cfg.store.path)
        self.silence_table = SilenceTable(cfg.store.path)
        self.dispatcher = Dispatcher(self.routes, Muter(self.silence_table.all()),
                                     {r.name: r.send_resolved for r in a.receivers})
        self._silences_read = time.monotonic()
        self.supervisor = Supervisor()  # failed iterations by task (deliver:<receiver>, timers, handle, start, drain)
        self._stop_at: float | None = None  # loop time by which the drain must be done
        rng = rng or random.Random()
        stop_at = lambda: self._stop_at  # noqa: E731
        self.deliveries = {
            r.name: Delivery(r.name, self.notifiers[r.name], self.outbox,
                             1.0 / (r.max_per_second or (1.0 if r.kind == "slack" else 1e9)), rng,
                             self.supervisor.failed, stop_at)
            for r in a.receivers}
        # rows of receivers that left the config: failed and expired by the same policy
        self._orphans = Delivery("(orphans)", None, self.outbox, 0.0, rng, self.supervisor.failed, stop_at)
        self._tasks: list[asyncio.Task] = []  # the timers task
        self._delivery: dict[str, asyncio.Task] = {}  # one delivery task per receiver
        self._wake = {name: asyncio.Event() for name in self.notifiers}
        self._route_lock = asyncio.Lock()
        self._outbox_counts: tuple[int, float] = (0, 0.0)  # (pending, oldest age s), refreshed by the timers
        self._orphans_checked = 0.0

    # -- counters over the stages -----------------------------------------------------------
    @property
    def errors(self) -> Counter[str]:
        return self.supervisor.errors

    @property
    def last_error(self) -> dict[str, str]:
        return self.supervisor.last_error

    @property
    def muted(self) -> int:
        return self.dispatcher.muted

    @property
    def max_attempts(self) -> int:
        return self._orphans.max_attempts

    @max_attempts.setter
    def max_attempts(self, n: int) -> None:
        for d in (*self.deliveries.values(), self._orphans):
            d.max_attempts = n

    def _total(self, field: str) -> int:
        return sum(getattr(d, field) for d in (*self.deliveries.values(), self._orphans))

    sent = property(lambda self: self._total("sent"))
    failed = property(lambda self: self._total("failed"))
    expired = property(lambda self: self._total("expired"))

    # -- the sink protocol ------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await asyncio.to_thread(self._settle_restart)
        except Exception as e:  # the store is failing: the next start settles it
            self.supervisor.failed("start", e)
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
        ended = []
        for inc in incidents:
            if inc.status == "firing":
                self.open[inc.id] = inc
            else:  # resolved, merged or abandoned (seen open here or not: opened and ended between flushes)
                self.open.pop(inc.id, None)
                ended.append(inc)
        try:
            await self._route(ended=ended)
        except Exception as e:
            self.supervisor.failed("handle", e)

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
            self.supervisor.failed("drain", e)
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
            self.supervisor.failed("drain", e)
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
                if await self.deliveries[name].due(deadline) == 0:
                    return
            except Exception as e:
                self.supervisor.failed(f"deliver:{name}", e)
                return

    # -- checkpoint -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Routing timers of the open incidents (the incidents ride in the pipeline's
        checkpoint): a restart does not re-send what was already sent."""
        return {"routes": list(self.routes), "route_state": self.dispatcher.route_state}

    def restore(self, snap: dict[str, Any]) -> None:
        if snap.get("routes") == list(self.routes):  # timers belong to routes by position
            self.dispatcher.route_state = {k: v for k, v in snap.get("route_state", {}).items() if k[1] in self.open}
        log.info("route_timers_restored", open=len(self.open), route_timers=len(self.dispatcher.route_state))

    def _settle_restart(self) -> None:
        """At start (in a thread): count as sent what the outbox shows was already queued or
        sent for a restored incident."""
        reconciled = self.dispatcher.settle(list(self.open.values()), self.outbox.latest, time.time())
        if reconciled:
            log.info("route_timers_reconciled", count=reconciled, note="bodies already in the outbox are not re-sent")

    # -- dispatch ---------------------------------------------------------------------------
    async def _route(self, now: float | None = None, ended: list[Incident] = ()) -> None:
        """One dispatch pass over the open incidents (and ``ended``: see Dispatcher.plan);
        the batch goes to the outbox before the timers move."""
        async with self._route_lock:  # one pass at a time: two would queue the same update
            now = time.time() if now is None else now
            if time.monotonic() - self._silences_read >= POLL_S:
                self.dispatcher.muter.silences = await asyncio.to_thread(self.silence_table.all)
                self._silences_read = time.monotonic()
            plan = self.dispatcher.plan(list(self.open.values()), now, ended)
            for incident_id, why in plan.newly_muted:
                log.info("incident_muted", incident_id=incident_id, reason=why)
            if plan.batch:
                await asyncio.to_thread(self._enqueue, plan.batch)  # raises: timers stay, the next pass retries
                self.dispatcher.commit(plan, now)
                for receiver in {b[0] for b in plan.batch}:
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
            await self._orphans.fail(row_id, receiver, incident_id, attempts, created_at,
                                     Result("fatal", f"no such receiver {receiver}"))

    # -- delivery ---------------------------------------------------------------------------
    async def _deliver_step(self, receiver: str) -> None:
        delivery = self.deliveries[receiver]
        if self._stop_at is not None:  # draining: until nothing is due or the deadline
            if asyncio.get_running_loop().time() >= self._stop_at or await delivery.due(self._stop_at) == 0:
                raise Stopped
            return
        if await delivery.due() == 0:
            wake = self._wake[receiver]
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), 0.25)
            except TimeoutError:
                pass

    def status(self) -> dict[str, Any]:
        """Counters only, no SQLite: safe from the /metrics thread while the store is locked."""
        pending, oldest = self._outbox_counts
        return {"open_incidents": len(self.open), "sent": self.sent, "failed": self.failed,
                "expired": self.expired, "errors": dict(self.errors), "last_error": dict(self.last_error),
                "pending": pending, "oldest_pending_s": oldest,
                "receivers": {d.receiver: {"sent": d.sent, "failed": d.failed, "expired": d.expired}
                              for d in (*self.deliveries.values(), self._orphans)}}
