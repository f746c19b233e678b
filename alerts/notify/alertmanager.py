"""Prometheus Alertmanager: ``POST <url>/api/v2/alerts``, so a team that already routes,
silences and pages with Alertmanager keeps doing so.

An incident becomes one alert per (kind, symbol) it carries — labels ``alertname``
(``PerpwatchIncident``), ``incident``, ``kind``, ``symbol`` (``market`` for a market-wide
anomaly) and ``severity`` (the worst of that pair) — so Alertmanager's matchers on kind or
symbol work, and grouping by ``incident`` gathers them again. Annotations: ``summary``
(the incident's title), ``description`` (counts by kind, accounts), ``runbook_url``.
``startsAt`` is the pair's first anomaly (event time, ISO 8601). A firing alert's
``endsAt`` is 24 h after the send (every update and repeat renews it: keep
``repeat_interval`` below 24 h); a resolved incident's alerts end at its end (or now, if
that is later than the event time says). At most ``MAX_ALERTS`` pairs per incident, the
most severe first. ``url`` is Alertmanager's base URL (``http://127.0.0.1:9093``).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import httpx
import msgspec

from alerts.notify import Result, post, register_secret
from monitor.events import SEVERITY_RANK

MAX_ALERTS = 50
FIRING_TTL_S = 24 * 3600.0


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alerts(payload: dict[str, Any], now: float | None = None) -> list[dict[str, Any]]:
    """The Alertmanager v2 alerts for one CONTRACT payload."""
    now = time.time() if now is None else now
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for a in payload["anomalies"]:
        key = (a["kind"], a.get("symbol") or "market")
        p = pairs.get(key)
        if p is None:
            pairs[key] = {"severity": a["severity"], "ts": a["ts"]}
        else:
            if SEVERITY_RANK.get(a["severity"], 0) > SEVERITY_RANK.get(p["severity"], 0):
                p["severity"] = a["severity"]
            p["ts"] = min(p["ts"], a["ts"])
    if payload["status"] == "resolved":
        ended = payload.get("ended_ts")
        ends = min(now, ended / 1000) if ended else now
    else:
        ends = now + FIRING_TTL_S
    counts = payload.get("counts_by_kind") or {}
    description = ", ".join(f"{k} x{n}" for k, n in counts.items())
    accounts = payload.get("accounts") or []
    if accounts:
        description += f"; accounts: {', '.join(accounts[:10])}" + (f" (+{len(accounts) - 10})" if len(accounts) > 10
                                                                     else "")
    annotations = {"summary": payload["title"], "description": description or payload["title"]}
    if payload.get("runbook_url"):
        annotations["runbook_url"] = payload["runbook_url"]
    order = sorted(pairs.items(), key=lambda kv: (-SEVERITY_RANK.get(kv[1]["severity"], 0), kv[0]))[:MAX_ALERTS]
    return [{"labels": {"alertname": "PerpwatchIncident", "incident": payload["incident_id"], "kind": kind,
                        "symbol": symbol, "severity": p["severity"]},
             "annotations": annotations,
             "startsAt": _iso(min(p["ts"] / 1000, now)), "endsAt": _iso(max(ends, min(p["ts"] / 1000, now)))}
            for (kind, symbol), p in order]


class AlertmanagerNotifier:
    def __init__(self, name: str, url: str, timeout: float, client: httpx.AsyncClient | None = None) -> None:
        self.name = name
        self._url = url.rstrip("/") + "/api/v2/alerts"
        register_secret(url)
        self.client = client or httpx.AsyncClient(timeout=timeout, verify=True)

    async def send(self, body: bytes) -> Result:
        out = msgspec.json.encode(alerts(msgspec.json.decode(body)))
        return await post(self.client, self._url, out, {"Content-Type": "application/json",
                                                        "User-Agent": "perpwatch"}, self.name)

    async def aclose(self) -> None:
        await self.client.aclose()
