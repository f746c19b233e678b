"""PagerDuty Events API v2: ``trigger`` while an incident fires (each update re-triggers the
same ``dedup_key``: PagerDuty folds it into the open alert), ``resolve`` when it ends.

``dedup_key`` is the incident id; the routing key (the integration key) comes from
``secret_env`` / ``secret_file`` and is masked everywhere. The trigger's ``payload``:
``summary`` (the incident's title, at most 1,024 characters), ``source`` ``perpwatch``,
``severity`` (critical / warning / info), ``timestamp`` (the incident's start, ISO 8601),
``component`` (its symbols), ``group`` (its kinds), ``class`` (its most frequent kind) and
``custom_details`` (counts by kind, top accounts, totals, the notification and its
sequence); ``links`` carries the route's runbook. ``url`` is the events endpoint
(``https://events.pagerduty.com/v2/enqueue``).
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from alerts.notify import Result, post, register_secret

SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}


def event(payload: dict[str, Any], routing_key: str) -> dict[str, Any]:
    """The Events v2 body for one CONTRACT payload."""
    if payload["status"] == "resolved":
        return {"routing_key": routing_key, "event_action": "resolve", "dedup_key": payload["incident_id"]}
    counts = payload.get("counts_by_kind") or {}
    kinds = sorted({a["kind"] for a in payload["anomalies"]}) or sorted(counts)
    top = max(counts, key=lambda k: (counts[k], k)) if counts else (kinds[0] if kinds else "anomaly")
    out: dict[str, Any] = {
        "routing_key": routing_key,
        "event_action": "trigger",
        "dedup_key": payload["incident_id"],
        "client": "perpwatch",
        "payload": {
            "summary": payload["title"][:1024],
            "source": "perpwatch",
            "severity": SEVERITY.get(payload["severity"], "warning"),
            "timestamp": payload.get("started_at"),
            "component": ", ".join(payload["symbols"])[:255] or "market",
            "group": ", ".join(kinds)[:255],
            "class": top,
            "custom_details": {"counts_by_kind": counts, "accounts": payload["accounts"][:20],
                               "accounts_total": len(payload["accounts"]),
                               "anomalies_total": payload.get("anomalies_total"),
                               "notification": payload.get("notification"), "sequence": payload.get("sequence"),
                               "updated_at": payload.get("updated_at")},
        },
    }
    if out["payload"]["timestamp"] is None:
        del out["payload"]["timestamp"]
    if payload.get("runbook_url"):
        out["links"] = [{"href": payload["runbook_url"], "text": "runbook"}]
    return out


class PagerDutyNotifier:
    def __init__(self, name: str, url: str, routing_key: str, timeout: float,
                 client: httpx.AsyncClient | None = None) -> None:
        self.name = name
        self._url = url
        self._key = routing_key
        register_secret(url)
        register_secret(routing_key)
        self.client = client or httpx.AsyncClient(timeout=timeout, verify=True)

    async def send(self, body: bytes) -> Result:
        out = msgspec.json.encode(event(msgspec.json.decode(body), self._key))
        return await post(self.client, self._url, out, {"Content-Type": "application/json",
                                                        "User-Agent": "perpwatch"}, self.name)

    async def aclose(self) -> None:
        await self.client.aclose()
