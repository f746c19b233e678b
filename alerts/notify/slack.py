"""Slack incoming webhook with Block Kit: severity colour and emoji, the incident's
symbols and accounts, the key numbers of each anomaly, and the command to dig in."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec

from alerts.notify import Result, post

EMOJI = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}
COLOR = {"info": "#439FE0", "warning": "#FFA500", "critical": "#D00000"}
KEY_NUMBERS = ("score", "z_cancel", "z_ratio", "cancelled_notional", "leverage", "notional", "ratio",
               "cluster_notional", "absorbing_depth", "distance_bps", "missing", "accounts_raising")


def blocks(payload: dict[str, Any]) -> dict[str, Any]:
    sev = payload["severity"]
    lines = []
    for a in payload["anomalies"][-8:]:
        numbers = [f"{k}={_fmt(a['detail'][k])}" for k in KEY_NUMBERS if k in a.get("detail", {})]
        who = " ".join(x for x in (a.get("symbol"), a.get("account")) if x)
        lines.append(f"• *{a['kind']}* {who} score={_fmt(a['score'])} {' '.join(numbers[:4])}")
    body = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{payload['title']}"[:150]}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*Severity*\n{EMOJI[sev]} {sev}"},
            {"type": "mrkdwn", "text": f"*Symbols*\n{', '.join(payload['symbols']) or '-'}"},
            {"type": "mrkdwn", "text": f"*Accounts*\n{', '.join(payload['accounts'][:10]) or '-'}"},
            {"type": "mrkdwn", "text": f"*Incident*\n`{payload['incident_id']}`"},
        ]},
        {"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(lines)[:2900] or "-"}},
        {"type": "context", "elements": [{"type": "mrkdwn",
                                          "text": f"`perpwatch incident {payload['incident_id']}` for the timeline"}]},
    ]
    return {"text": payload["title"], "attachments": [{"color": COLOR[sev], "blocks": body}]}


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


class SlackNotifier:
    def __init__(self, name: str, url: str, timeout: float, client: httpx.AsyncClient | None = None) -> None:
        self.name = name
        self._url = url  # the URL is the credential: never logged
        self.client = client or httpx.AsyncClient(timeout=timeout, verify=True)

    async def send(self, body: bytes) -> Result:
        message = msgspec.json.encode(blocks(msgspec.json.decode(body)))
        return await post(self.client, self._url, message, {"Content-Type": "application/json"}, self.name)

    async def aclose(self) -> None:
        await self.client.aclose()
