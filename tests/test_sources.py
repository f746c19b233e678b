"""run_websocket against real websockets servers on 127.0.0.1: every end of a connection is
a reconnect with backoff (issue 11 rows 1 and 12, stale feeds, TLS failures named plainly).

The server runs in the test's own event loop; delays are injected (zeros, or recorded by a
fake sleep), so nothing waits on the wall clock beyond the generous TIMEOUT guard.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
from structlog.testing import capture_logs
from websockets.asyncio.server import serve

from monitor.codecs.binance_usdm import BinanceUsdmCodec
from monitor.config import Duration, SourceConfig
from monitor.sources import SourceStatus, classify, describe, run_websocket
from monitor.venues import BinanceSession
from tests.support import T0, TIMEOUT

HEARTBEAT = json.dumps({"type": "heartbeat", "ts": T0})


def source(url: str, **kw) -> SourceConfig:
    durations = {k: Duration.parse(v) for k, v in kw.items() if k in ("stale_after", "reconnect_max")}
    rest = {k: v for k, v in kw.items() if k not in durations}
    return SourceConfig(name="t", url=url, **durations, **rest)


async def until(predicate, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def stop(task: asyncio.Task) -> None:
    """run_websocket must still be running, and must end when (and only when) cancelled."""
    assert not task.done(), task.exception() if not task.cancelled() else "cancelled"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def run(coro) -> None:
    asyncio.run(asyncio.wait_for(coro, TIMEOUT * 2))


class Feed:
    """A loopback websockets server whose handler is a coroutine of (ws, connection number)."""

    def __init__(self, handler, **kw) -> None:
        self.handler = handler
        self.kw = kw
        self.connections = 0

    async def _handle(self, ws) -> None:
        self.connections += 1
        await self.handler(ws, self.connections)

    async def __aenter__(self) -> Feed:
        self._server = await serve(self._handle, "127.0.0.1", 0, **self.kw).__aenter__()
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'wss' if 'ssl' in self.kw else 'ws'}://127.0.0.1:{port}/feed"
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()


# -- row 1: clean closes ------------------------------------------------------------------
def test_clean_close_1000_and_1001_reconnects_forever():
    """The feed sends one frame then closes cleanly (1000, then 1001, alternating): the
    source keeps reconnecting and delivering; only cancelling its task ends it."""

    async def handler(ws, n):
        await ws.send(HEARTBEAT)
        await ws.close(1000 if n % 2 else 1001, "bye" if n % 2 else "going away")

    async def main():
        async with Feed(handler) as feed:
            status, frames = SourceStatus("t"), []

            async def sink(f):
                frames.append(f)

            task = asyncio.create_task(run_websocket(source(feed.url), sink, status,
                                                     delays=itertools.repeat(0.0)))
            await until(lambda: status.connects >= 6 or task.done(), "six connects")
            await stop(task)
            assert feed.connections >= 6
            assert status.clean_closes >= 5 and status.retries >= 5
            assert frames[:6] == [HEARTBEAT] * 6
            assert "closed the connection: 100" in status.last_error

    run(main())


# -- row 12: oversized frames back off ------------------------------------------------------
def test_oversized_frame_on_every_connect_takes_a_backoff_delay_each_time():
    """Row 12: a frame over max_frame_bytes on every connect used to reconnect immediately
    (507 reconnects in 20 s); now each reconnect takes the next delay of the backoff."""

    async def handler(ws, n):
        await ws.send("x" * 4096)
        await ws.wait_closed()

    taken: list[float] = []

    def delays():
        for i in itertools.count():
            taken.append(0.0)
            yield 0.0

    async def main():
        async with Feed(handler, compression=None) as feed:
            status = SourceStatus("t")

            async def sink(f):
                raise AssertionError("an oversized frame must not reach the sink")

            task = asyncio.create_task(run_websocket(source(feed.url, max_frame_bytes=1024), sink, status,
                                                     delays=delays()))
            await until(lambda: status.oversized >= 5 or task.done(), "five oversized frames")
            await stop(task)
            assert status.oversized >= 5
            assert len(taken) == status.oversized  # one backoff delay per oversized close, none skipped
            assert status.connects in (len(taken), len(taken) + 1)

    run(main())


def test_every_path_sleeps_exactly_the_backoff_iterators_delays():
    """Oversized, clean close, stale and refused connections: each reconnect sleeps the next
    value of the injected iterator (recorded by a fake sleep), in order, counted."""

    async def handler(ws, n):
        kind = n % 3
        if kind == 1:
            await ws.send("x" * 4096)  # oversized
            await ws.wait_closed()
        elif kind == 2:
            await ws.close(1000)  # clean close
        else:
            await ws.wait_closed()  # stale: says nothing

    async def main():
        async with Feed(handler, compression=None) as feed:
            status, slept = SourceStatus("t"), []
            expected = [round(0.001 * i, 3) for i in range(1, 1000)]

            async def fake_sleep(d):
                slept.append(d)
                await asyncio.sleep(0)

            cfg = source(feed.url, max_frame_bytes=1024, stale_after="50ms")
            task = asyncio.create_task(run_websocket(cfg, lambda f: asyncio.sleep(0), status,
                                                     delays=iter(expected), sleep=fake_sleep))
            await until(lambda: len(slept) >= 9 or task.done(), "nine reconnects")
            await stop(task)
            assert slept == expected[:len(slept)]
            assert status.retries == len(slept)
            assert status.oversized >= 3 and status.clean_closes >= 3 and status.stale_reconnects >= 2
            assert status.oversized + status.clean_closes + status.stale_reconnects == len(slept)

    run(main())


def test_refused_connection_backs_off():
    """Nothing listening: each attempt takes a delay from the iterator (no hot loop)."""

    async def main():
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        status, slept = SourceStatus("t"), []

        async def fake_sleep(d):
            slept.append(d)
            await asyncio.sleep(0)

        task = asyncio.create_task(run_websocket(source(f"ws://127.0.0.1:{port}/"), lambda f: asyncio.sleep(0),
                                                 status, delays=itertools.count(1), sleep=fake_sleep))
        await until(lambda: len(slept) >= 3 or task.done(), "three retries")
        await stop(task)
        assert slept[:3] == [1, 2, 3] and status.connects == 0

    run(main())


# -- stale feed -------------------------------------------------------------------------------
def test_connected_but_silent_feed_is_reconnected_by_the_source():
    """A feed that accepts and then sends nothing is dropped after stale_after and reconnected,
    counted in SourceStatus.stale_reconnects."""

    async def handler(ws, n):
        await ws.wait_closed()

    async def main():
        async with Feed(handler) as feed:
            status = SourceStatus("t")
            with capture_logs() as logs:
                task = asyncio.create_task(run_websocket(source(feed.url, stale_after="100ms"),
                                                         lambda f: asyncio.sleep(0), status,
                                                         delays=itertools.repeat(0.0)))
                await until(lambda: status.stale_reconnects >= 3 or task.done(), "three stale reconnects")
                await stop(task)
            assert status.connects >= 3 and feed.connections >= 3 and status.frames == 0
            assert "stale_after" in status.last_error
            assert any(e["event"] == "source_stale" for e in logs)

    run(main())


def test_a_feed_that_keeps_talking_is_not_stale():
    async def handler(ws, n):
        for _ in range(20):
            await ws.send(HEARTBEAT)
            await asyncio.sleep(0.01)
        await ws.close(1000)

    async def main():
        async with Feed(handler) as feed:
            status = SourceStatus("t")
            task = asyncio.create_task(run_websocket(source(feed.url, stale_after="2s"), lambda f: asyncio.sleep(0),
                                                     status, delays=itertools.repeat(0.0)))
            await until(lambda: status.clean_closes >= 1 or task.done(), "a clean close")
            await stop(task)
            assert status.stale_reconnects == 0 and status.frames >= 20

    run(main())


# -- classify never raises --------------------------------------------------------------------
class Weird(Exception):
    pass


@pytest.mark.parametrize("exc", [Weird("boom"), AssertionError(), KeyError("x"), ValueError(),
                                 RuntimeError("x")])
def test_classify_never_raises_and_logs_the_unknown(exc):
    with capture_logs() as logs:
        assert classify(exc) == "retry"
    assert [e["log_level"] for e in logs] == ["error"]


def test_an_unexpected_error_in_the_sink_is_a_reconnect_not_the_end():
    async def handler(ws, n):
        await ws.send(HEARTBEAT)
        await ws.wait_closed()

    async def main():
        async with Feed(handler) as feed:
            status = SourceStatus("t")

            async def sink(f):
                raise Weird("a bug downstream")

            with capture_logs() as logs:
                task = asyncio.create_task(run_websocket(source(feed.url), sink, status,
                                                         delays=itertools.repeat(0.0)))
                await until(lambda: status.connects >= 3 or task.done(), "three connects")
                await stop(task)
            assert "Weird: a bug downstream" in status.last_error
            assert any(e["event"] == "source_unexpected_error" for e in logs)

    run(main())


# -- TLS certificate failures --------------------------------------------------------------------
@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> ssl.SSLContext:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl binary to make a self-signed certificate")
    d: Path = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"), "-days", "2",
                    "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    return ctx


def test_certificate_failure_is_named_in_the_source_status_and_log(self_signed):
    async def handler(ws, n):
        await ws.wait_closed()

    async def main():
        async with Feed(handler, ssl=self_signed) as feed:
            status, slept = SourceStatus("t"), []

            async def fake_sleep(d):
                slept.append(d)
                await asyncio.sleep(0)

            with capture_logs() as logs:
                task = asyncio.create_task(run_websocket(source(feed.url), lambda f: asyncio.sleep(0), status,
                                                         delays=itertools.repeat(0.5), sleep=fake_sleep))
                await until(lambda: len(slept) >= 2 or task.done(), "two retries")
                await stop(task)
            assert status.last_error.startswith("TLS certificate verification failed: "), status.last_error
            assert "self-signed" in status.last_error or "self signed" in status.last_error
            errors = [e["error"] for e in logs if e["event"] == "source_disconnected"]
            assert errors and all(e.startswith("TLS certificate verification failed") for e in errors)

    run(main())


def test_certificate_failure_of_a_rest_snapshot_is_named_not_connecterror(self_signed):
    """httpx wraps the SSL error in a ConnectError; the snapshot log says what it is."""

    async def handler(ws, n):
        await ws.wait_closed()

    async def main():
        async with Feed(handler, ssl=self_signed) as feed:
            rest = feed.url.replace("wss://", "https://").removesuffix("/feed")
            session = BinanceSession(SourceConfig(name="b", format="binance-usdm", symbols=["BTCUSDT"],
                                                  rest_url=rest), BinanceUsdmCodec())
            async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                with pytest.raises(httpx.ConnectError) as info:
                    await client.get(rest)
                assert describe(info.value).startswith("TLS certificate verification failed: ")

                async def put(item):
                    raise AssertionError("nothing to put")

                with capture_logs() as logs:
                    await session._fetch(client, "BTCUSDT", put)
            (line,) = [e for e in logs if e["event"] == "snapshot_failed"]
            assert line["error"].startswith("TLS certificate verification failed: "), line

    run(main())


def test_time_blocked_in_a_full_sink_is_not_staleness():
    """Backpressure (the sink blocked, e.g. a full queue) is ours, not the feed's: the frame
    queued meanwhile is still read on the same connection."""

    async def handler(ws, n):
        await ws.send(HEARTBEAT)
        await ws.send(HEARTBEAT)
        await ws.wait_closed()

    async def main():
        async with Feed(handler) as feed:
            status, seen = SourceStatus("t"), []

            async def sink(f):
                seen.append((status.connects, status.stale_reconnects))
                if len(seen) == 1:
                    await asyncio.sleep(0.5)  # 5x stale_after

            task = asyncio.create_task(run_websocket(source(feed.url, stale_after="100ms"), sink, status,
                                                     delays=itertools.repeat(0.0)))
            await until(lambda: len(seen) >= 2 or task.done(), "two frames")
            await stop(task)
            assert seen[:2] == [(1, 0), (1, 0)]

    run(main())


def test_rest_snapshot_body_is_capped_at_max_frame_bytes():
    """A REST snapshot larger than max_frame_bytes is refused (and retried later), read no further."""
    served = []

    def handler(request: httpx.Request) -> httpx.Response:
        async def body():
            for _ in range(1000):  # 64 MB if read whole
                served.append(1)
                yield b"x" * 65536
        return httpx.Response(200, content=body())

    async def main():
        cfg = SourceConfig(name="b", format="binance-usdm", symbols=["BTCUSDT"], rest_url="http://127.0.0.1:9",
                           max_frame_bytes=100_000)
        session = BinanceSession(cfg, BinanceUsdmCodec())
        puts = []

        async def put(item):
            puts.append(item)

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            with capture_logs() as logs:
                await session._fetch(client, "BTCUSDT", put)
        assert puts == [] and session.failed == 1 and session.fetched == 0
        assert len(served) <= 3
        (line,) = [e for e in logs if e["event"] == "snapshot_failed"]
        assert "max_frame_bytes" in line["error"]

    run(main())


def test_rest_snapshot_within_the_cap_is_queued():
    body = b'{"lastUpdateId":5,"bids":[["1","2"]],"asks":[],"E":1732400000000}'

    async def main():
        cfg = SourceConfig(name="b", format="binance-usdm", symbols=["BTCUSDT"], rest_url="http://127.0.0.1:9")
        session = BinanceSession(cfg, BinanceUsdmCodec())
        puts = []

        async def put(item):
            puts.append(item)

        transport = httpx.MockTransport(lambda req: httpx.Response(200, content=body))
        async with httpx.AsyncClient(transport=transport) as client:
            await session._fetch(client, "BTCUSDT", put)
        assert [p.body for p in puts] == [body] and session.fetched == 1
        assert session.apply(puts[0])[0].snapshot

    run(main())
