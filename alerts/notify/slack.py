"""Slack incoming webhook with Block Kit: severity colour and emoji, the incident's
symbols and accounts, the key numbers of each anomaly, and the command to dig in.

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

EMOJI = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}
COLOR = {"info": "#439FE0", "warning": "#FFA500", "critical": "#D00000"}
KEY_NUMBERS = ("score", "z_cancel", "z_ratio", "cancelled_notional", "leverage", "notional", "ratio",
               "cluster_notional", "absorbing_depth", "distance_bps", "missing", "accounts_raising")


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


def blocks(payload: dict[str, Any]) -> dict[str, Any]:
    sev = payload["severity"] if payload["severity"] in EMOJI else "warning"
    lines = []
    for a in payload["anomalies"][-8:]:
        numbers = [f"{k}={_fmt(a['detail'][k])}" for k in KEY_NUMBERS if k in (a.get("detail") or {})]
        who = " ".join(escape(x) for x in (a.get("symbol"), a.get("account")) if x)
        lines.append(f"• *{escape(a['kind'])}* {who} score={_fmt(a['score'])} {' '.join(numbers[:4])}")
    title = escape(payload["title"])
    incident_id = escape(payload["incident_id"])
    body = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(title, 150)}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*Severity*\n{EMOJI[sev]} {sev}"},
            {"type": "mrkdwn", "text": _cut(f"*Symbols*\n{', '.join(map(escape, payload['symbols'])) or '-'}", 2000)},
            {"type": "mrkdwn",
             "text": _cut(f"*Accounts*\n{', '.join(map(escape, payload['accounts'][:10])) or '-'}", 2000)},
            {"type": "mrkdwn", "text": _cut(f"*Incident*\n`{incident_id}`", 2000)},
        ]},
        {"type": "section", "text": {"type": "mrkdwn", "text": _cut("\n".join(lines), 2900) or "-"}},
        {"type": "context", "elements": [{"type": "mrkdwn",
                                          "text": _cut(f"`perpwatch incident {incident_id}` for the timeline", 2000)}]},
    ]
    return {"text": _cut(title, 3000), "attachments": [{"color": COLOR[sev], "blocks": body}]}


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
