"""sd_notify without a dependency: one datagram per state change to ``$NOTIFY_SOCKET``.

READY=1 once sources are started (connected or retrying) and the store is open;
WATCHDOG=1 from the event loop at half of ``$WATCHDOG_USEC`` (a wedged loop stops
pinging, and systemd restarts it); STATUS= a one-line summary; STOPPING=1 on drain.
Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import os
import socket


class SdNotifier:
    def __init__(self, environ: dict | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address = ("\0" + path[1:]) if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        self.watchdog_s = int(usec) / 1e6 / 2 if usec.isdigit() and int(usec) > 0 else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def notify(self, **fields: str | int) -> bool:
        """Send KEY=value lines, e.g. notify(READY=1, STATUS="ok"). False if not under systemd."""
        if not self.address:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        msg = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            self._sock.sendto(msg, self.address)
            return True
        except OSError:
            return False

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
