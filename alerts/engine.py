"""The daemon's alert sink: stored anomalies -> incidents -> routes -> outbox -> receivers.

Everything a receiver will get is written to the outbox (SQLite, beside the anomaly
store) before any send, and marked sent only after a 2xx, so nothing is lost to a
receiver that is down or to a restart: the delivery loop resumes from the table.
Retries use capped exponential backoff with full jitter and honour ``Retry-After``;
a fatal answer (4xx but 429) is retried at the cap, never dropped. Slack gets at most
one message a second per receiver unless configured otherwise.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any, Callable

import msgspec
import structlog

from alerts.correlate import Correlator, Incident
from alerts.incidents import IncidentTable
from alerts.notify.log import LogNotifier
from alerts.notify.slack import SlackNotifier
from alerts.notify.webhook import WebhookNotifier
from alerts.outbox import Outbox
from alerts.route import RouteState, decide, matches
from alerts.mute import Muter
from alerts.silence import POLL_S, SilenceTable
from monitor.config import Config, ReceiverConfig, receiver_url, resolve_secret
from monitor.events import Anomaly
from monitor.state import MarketState
from monitor.store import Store

log = structlog.get_logger("perpwatch.alerts")
_encode = msgspec.json.Encoder().encode
BACKOFF_CAP_S = 300.0


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
    def __init__(self, cfg: Config, state: MarketState | None = None, rng: random.Random | None = None,
                 event_now: Callable[[], int] | None = None) -> None:
        a = cfg.alerts
        self.routes = a.routes
        self.state = state
        self.event_now = event_now  # the pipeline's event time: quiet incidents resolve on it
        self.correlator = Correlator(a.incident_window.ms, a.resolve_after.ms, a.link_window.ms, a.min_account_share)
        self.notifiers = {r.name: make_notifier(r, i) for i, r in enumerate(a.receivers)}
        self.min_gap = {r.name: 1.0 / (r.max_per_second or (1.0 if r.kind == "slack" else 1e9))
                        for r in a.receivers}
        self.outbox = Outbox(cfg.store.path)
        self.incidents = IncidentTable(cfg.store.path)
        self.store = Store(cfg.store.path)
        self.silence_table = SilenceTable(cfg.store.path)
        self.muter = Muter(self.silence_table.all())
        self._silences_read = time.monotonic()
        self.muted = 0  # route passes skipped for a silence or an inhibition
        self._quiet: dict[str, str] = {}  # incident id -> why it is muted (logged once per reason)
        self._route_state: dict[tuple[int, str], RouteState] = {}
        self._next_send: dict[str, float] = {}
        self._rng = rng or random.Random()
        self._tasks: list[asyncio.Task] = []
        self._wake = asyncio.Event()
        self.sent = 0
        self.failed = 0

    # -- the sink protocol ------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._deliver_forever(), name="alerts:deliver"),
                       asyncio.create_task(self._timers_forever(), name="alerts:timers")]

    async def handle(self, anomalies: list[Anomaly]) -> None:
        changed: dict[str, Incident] = {}
        extra: list[Anomaly] = []
        for a in anomalies:
            inc, synthesized = self.correlator.add(a, self.state)
            changed[inc.id] = inc
            extra.extend(synthesized)
        if extra:
            await asyncio.to_thread(self.store.write_anomalies, extra)
        await asyncio.to_thread(self.incidents.upsert, list(changed.values()) + self.correlator.take_closed())
        await self._route(time.time())

    async def drain(self, deadline: float) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._resolve_quiet()
        await self._route(time.time())
        loop = asyncio.get_running_loop()
        while loop.time() < deadline - 0.2:
            if await self._deliver_due() == 0:
                break
        pending = await asyncio.to_thread(self.outbox.pending)
        if pending:
            log.warning("notifications_pending_at_stop", pending=pending, note="sent after the next start")
        for n in self.notifiers.values():
            await n.aclose()
        self.outbox.close()
        self.silence_table.close()
        self.incidents.close()
        self.store.close()

    # -- checkpoint -------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Open incidents and their routing timers: a restart keeps incident ids and does
        not re-send what was already sent."""
        return {"correlator": self.correlator, "routes": list(self.routes), "route_state": self._route_state}

    def restore(self, snap: dict[str, Any]) -> None:
        old = snap["correlator"]
        c = self.correlator
        c.open, c.closed = old.open, old.closed
        if snap.get("routes") == list(self.routes):  # timers belong to routes by position
            self._route_state = {k: v for k, v in snap["route_state"].items() if k[1] in c.open}
        log.info("incidents_restored", open=len(c.open), route_timers=len(self._route_state))

    # -- routing ----------------------------------------------------------------------------
    async def _route(self, now: float) -> None:
        batch: list[tuple[str, str, bytes]] = []
        live = set()
        if time.monotonic() - self._silences_read >= POLL_S:
            self.muter.silences = await asyncio.to_thread(self.silence_table.all)
            self._silences_read = time.monotonic()
        incidents = list(self.correlator.open.values())
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
                    st.last_sent, st.sent_version = now, inc.version
                if not route.continue_:
                    break
        for key in [k for k in self._route_state if k[1] not in live]:  # resolved incidents
            del self._route_state[key]
        for key in [k for k in self._quiet if k not in live]:
            del self._quiet[key]
        if batch:
            await asyncio.to_thread(self._enqueue, batch)
            self._wake.set()

    def _enqueue(self, batch: list[tuple[str, str, bytes]]) -> None:
        for receiver, incident_id, body in batch:
            self.outbox.enqueue(receiver, incident_id, body)

    async def _timers_forever(self) -> None:
        while True:  # group_wait and repeat_interval fire without new anomalies; quiet incidents resolve
            await asyncio.sleep(0.5)
            await self._resolve_quiet()
            await self._route(time.time())

    async def _resolve_quiet(self) -> None:
        if self.event_now is not None and (now := self.event_now()):
            self.correlator.resolve(now)
        closed = self.correlator.take_closed()
        if closed:
            await asyncio.to_thread(self.incidents.upsert, closed)

    # -- delivery ---------------------------------------------------------------------------
    async def _deliver_forever(self) -> None:
        while True:
            n = await self._deliver_due()
            if n == 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), 0.25)
                except TimeoutError:
                    pass

    async def _deliver_due(self) -> int:
        rows = await asyncio.to_thread(self.outbox.due, time.time())
        done = 0
        for row_id, receiver, incident_id, body, attempts in rows:
            notifier = self.notifiers.get(receiver)
            now = time.time()
            if notifier is None:  # the receiver left the config: keep it, retry rarely
                await asyncio.to_thread(self.outbox.mark_failed, row_id, now + BACKOFF_CAP_S, "no such receiver")
                continue
            wait = self._next_send.get(receiver, 0.0) - now
            if wait > 0:
                await asyncio.sleep(min(wait, 1.0))
            self._next_send[receiver] = time.time() + self.min_gap[receiver]
            result = await notifier.send(body)
            if result.outcome == "ok":
                self.sent += 1
                done += 1
                await asyncio.to_thread(self.outbox.mark_sent, row_id)
                log.info("notification_sent", receiver=receiver, incident_id=incident_id, attempts=attempts + 1)
                continue
            self.failed += 1
            delay = self._backoff(attempts, result.retry_after, fatal=result.outcome == "fatal")
            await asyncio.to_thread(self.outbox.mark_failed, row_id, time.time() + delay, result.error)
            log.warning("notification_failed", receiver=receiver, incident_id=incident_id, error=result.error,
                        outcome=result.outcome, retry_in_s=round(delay, 2))
        return done

    def _backoff(self, attempts: int, retry_after: float | None, fatal: bool) -> float:
        if retry_after is not None:
            return min(retry_after, 3600.0)
        if fatal:
            return BACKOFF_CAP_S
        return max(0.25, self._rng.uniform(0, min(BACKOFF_CAP_S, 0.5 * 2 ** attempts)))

    def status(self) -> dict[str, Any]:
        return {"open_incidents": len(self.correlator.open), "sent": self.sent, "failed": self.failed,
                "pending": self.outbox.pending(), "oldest_pending_s": self.outbox.oldest_pending_age()}
