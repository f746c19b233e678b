"""The ``log`` receiver: each notification as one structured log line (dry runs)."""

from __future__ import annotations

import msgspec
import structlog

from alerts.notify import Result

log = structlog.get_logger("perpwatch.notify")


class LogNotifier:
    def __init__(self, name: str) -> None:
        self.name = name

    async def send(self, body: bytes) -> Result:
        p = msgspec.json.decode(body)
        log.warning("incident", receiver=self.name, incident_id=p["incident_id"], severity=p["severity"],
                    title=p["title"], anomalies=len(p["anomalies"]))
        return Result("ok")

    async def aclose(self) -> None:
        return None
