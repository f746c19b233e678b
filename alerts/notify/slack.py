"""Slack incoming webhook with Block Kit: a NEW / UPDATE / ESCALATED / RESOLVED marker and the
incident's headline (what, where, how much: ``alerts/summary.py``) with its start time;
severity colour and emoji; symbols; accounts largest first with the count; counts by kind;
one line per (kind, symbol), most important first; the route's runbook; the command to dig in.

Every text built from data (title, symbols, accounts, kinds, ids, detail values) is
escaped for Slack (``&`` -> ``&amp;``, ``<`` -> ``&lt;``, ``>`` -> ``&gt;``): a symbol named
``<!channel>`` must not ping a channel, nor ``<https://evil.example|click here>`` show a
disguised link. Slack renders the entities back as the characters, in mrkdwn and
plain_text alike.
"""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from alerts.notify import Result, post, register_secret
from alerts.summary import line, money, ranked

EMOJI = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}
COLOR = {"info": "#439FE0", "warning": "#FFA500", "critical": "#D00000"}


def escape(text: Any) -> str:
    """Slack's three control characters as entities (``&`` first)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, n: int) -> str:
    """At most ``n`` characters without splitting an entity (``&amp;`` cut to ``&am``)."""
    if len(text) <= n:
        return text
    head = text[:n]
    amp = head.rfind("&")
    if amp != -1 and ";" not in head[amp:]:
        head = head[:amp]
    return head


MARK = {"first": "NEW", "update": "UPDATE", "escalation": "ESCALATED", "repeat": "STILL FIRING",
        "resolved": "RESOLVED", "test": "TEST"}


def _accounts_by_size(payload: dict[str, Any], n: int = 10) -> list[str]:
    """The incident's accounts, largest first (by the notional its anomalies name), then the rest."""
    size: dict[str, float] = {}
    for a in payload["anomalies"]:
        d = a.get("detail") or {}
        for r in d.get("top_accounts") or d.get("accounts") or ():
            if isinstance(r, dict) and r.get("account"):
                v = r.get("notional") or r.get("cancelled_notional") or 0.0
                size[str(r["account"])] = max(size.get(str(r["account"]), 0.0), float(v or 0.0))
        if a.get("account"):
            v = d.get("notional") or (d.get("features") or {}).get("cancelled_notional") or 0.0
            size[a["account"]] = max(size.get(a["account"], 0.0), float(v) if isinstance(v, (int, float)) else 0.0)
    ranked = sorted(payload["accounts"], key=lambda acct: (-size.get(acct, 0.0), acct))
    return [f"{acct} {money(size[acct])}" if size.get(acct) else acct for acct in ranked[:n]]


def blocks(payload: dict[str, Any]) -> dict[str, Any]:
    sev = payload["severity"] if payload["severity"] in EMOJI else "warning"
    lines = payload.get("summary") or [line(a) for a in ranked(payload["anomalies"])[:8]]
    headline = payload.get("headline") or (lines[0] if lines else payload["title"])
    title = escape(payload["title"])
    incident_id = escape(payload["incident_id"])
    mark = MARK.get(payload.get("notification") or "", "")
    since = payload.get("started_at")
    top = f"*{mark}* " if mark else ""
    top += escape(headline)
    if since:
        top += f"\nsince {escape(since)}" + (f", ended {escape(payload['ended_at'])}" if payload.get("ended_at")
                                               else "")
    accounts = _accounts_by_size(payload)
    more = len(payload["accounts"]) - len(accounts)
    counts = payload.get("counts_by_kind") or {}
    body = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(title, 150)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut(top, 2900)}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*Severity*\n{EMOJI[sev]} {sev}"},
            {"type": "mrkdwn", "text": _cut(f"*Symbols*\n{', '.join(map(escape, payload['symbols'])) or '-'}", 2000)},
            {"type": "mrkdwn", "text": _cut("*Accounts*\n" + (", ".join(map(escape, accounts)) or "-")
                                            + (f" (+{more} more)" if more > 0 else ""), 2000)},
            {"type": "mrkdwn", "text": _cut("*Anomalies*\n" + (", ".join(f"{escape(k)} x{n}" for k, n in counts.items())
                                                              or str(len(payload["anomalies"]))), 2000)},
        ]},
        {"type": "section", "text": {"type": "mrkdwn",
                                     "text": _cut("\n".join(f"• {escape(x)}" for x in lines), 2900) or "-"}},
    ]
    context = [{"type": "mrkdwn", "text": _cut(f"`perpwatch incident {incident_id}` for the timeline", 2000)}]
    runbook = payload.get("runbook_url")
    if isinstance(runbook, str) and runbook.startswith(("https://", "http://")) and "|" not in runbook:
        context.insert(0, {"type": "mrkdwn", "text": _cut(f"<{escape(runbook)}|runbook>", 2000)})
    body.append({"type": "context", "elements": context})
    text = f"{mark}: {payload['title']}" if mark else payload["title"]
    return {"text": _cut(escape(text), 3000), "attachments": [{"color": COLOR[sev], "blocks": body}]}


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else escape(x)


class SlackNotifier:
    def __init__(self, name: str, url: str, timeout: float, client: httpx.AsyncClient | None = None) -> None:
        self.name = name
        self._url = url  # the URL is the credential: never logged
        register_secret(url)
        self.client = client or httpx.AsyncClient(timeout=timeout, verify=True)

    async def send(self, body: bytes) -> Result:
        message = msgspec.json.encode(blocks(msgspec.json.decode(body)))
        return await post(self.client, self._url, message, {"Content-Type": "application/json"}, self.name)

    async def aclose(self) -> None:
        await self.client.aclose()
