"""Test support: loopback servers in background threads and the daemon as a subprocess.

Timeouts scale from one constant (``TIMEOUT``); nothing asserts on wall-clock speed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from websockets.asyncio.server import serve

TIMEOUT = float(os.environ.get("PERPWATCH_TEST_TIMEOUT", "20"))
T0 = 1_732_400_000_000  # event time origin for crafted streams (ms)
ROOT = Path(__file__).resolve().parents[1]


class ThreadedFeed:
    """A websocket server on 127.0.0.1 that sends ``frames`` to each client, then idles."""

    def __init__(self, frames: list[str | bytes] | Callable[[], list[str | bytes]]) -> None:
        self._frames = frames
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stop: asyncio.Future | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ThreadedFeed:
        self._thread.start()
        if not self._started.wait(TIMEOUT):
            raise RuntimeError("feed server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(TIMEOUT)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/feed"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _handler(self, ws) -> None:
        self.connections += 1
        frames = self._frames() if callable(self._frames) else self._frames
        for f in frames:
            await ws.send(f)
        await ws.wait_closed()

    async def _main(self) -> None:
        self._stop = self._loop.create_future()
        async with serve(self._handler, "127.0.0.1", 0) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._started.set()
            await self._stop


def frame(*events: dict) -> str:
    return json.dumps(list(events)) if len(events) != 1 else json.dumps(events[0])


def write_config(path: Path, feed_url: str, store: Path, extra: str = "") -> Path:
    path.write_text(f"""
[[sources]]
name = "exchange"
url = "{feed_url}"
format = "perpwatch"

[store]
path = "{store}"

[metrics]
enabled = false
{extra}
""")
    return path


def perpwatch(*args: str, env: dict | None = None, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "monitor.app.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def start_daemon(config: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "monitor.app.cli", "run", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})


def stop_daemon(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out, err


def run_until(config: Path, predicate: Callable[[], object], what: str, env: dict | None = None) -> tuple[str, str]:
    """Start the daemon, wait for ``predicate``, stop it with SIGTERM; it must exit 0.
    Returns its (stdout, stderr)."""
    proc = start_daemon(config, env)
    try:
        wait_for(predicate, what)
    finally:
        code, out, err = stop_daemon(proc)
    assert code == 0, err
    return out, err


def wait_for(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class Collector:
    """An HTTP receiver on 127.0.0.1 recording every POST; ``script`` gives the status per
    request (e.g. [503, 503] then 200s) and optional headers (Retry-After)."""

    def __init__(self, script: list[int | tuple[int, dict]] | None = None, gate: threading.Event | None = None) -> None:
        """``gate``: when given, every POST is recorded in ``bodies`` on arrival and answered
        only once the gate is set (a POST held in flight)."""
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.requests: list[tuple[dict, bytes, float]] = []
        self.bodies: list[bytes] = []  # every POST's body, on arrival
        self.answers: list[int] = []
        self.script = list(script or [])
        self.gate = gate
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                collector.bodies.append(body)
                if collector.gate is not None:
                    collector.gate.wait(TIMEOUT)
                step = collector.script.pop(0) if collector.script else 200
                status, headers = step if isinstance(step, tuple) else (step, {})
                collector.answers.append(status)
                if status == 200:
                    collector.requests.append((dict(self.headers), body, time.time()))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.gate is not None:
            self.gate.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def payloads(self) -> list[dict]:
        return [json.loads(body) for _, body, _ in self.requests]


async def correlate_and_handle(engine, anomalies: list, correlator=None) -> list:
    """What the daemon does for the alert engine: the pipeline's correlator places each
    anomaly in an incident (no market state here), the daemon stores both, then hands the
    engine the anomalies and the incidents they changed. Returns those incidents."""
    from alerts.correlate import Correlator

    c = correlator if correlator is not None else engine.__dict__.setdefault("_test_correlator", Correlator())
    changed = {}
    for a in anomalies:
        inc, _ = c.add(a, None)
        changed[inc.id] = inc
    for inc in c.take_closed():
        changed[inc.id] = inc
    await engine.handle(anomalies, list(changed.values()))
    return list(changed.values())


def scrape_metrics(port: int, timeout: float = 5.0) -> dict[str, float]:
    """A daemon's /metrics on 127.0.0.1 (``monitor.ops.metrics.scrape``, prometheus_client's
    parser): each sample name with its values summed over labels ({} while not up)."""
    from monitor.ops.metrics import scrape

    try:
        samples = scrape("127.0.0.1", port, timeout)
    except OSError:
        return {}
    out: dict[str, float] = {}
    for name, _, value in samples:
        out[name] = out.get(name, 0.0) + value
    return out
