"""The one supervisor of shell tasks (daemon and alert engine): a failure costs the iteration."""

from __future__ import annotations

import asyncio

from alerts.notify import register_secret
from monitor.ops.supervise import Stopped, Supervisor


def test_a_failing_step_is_counted_masked_and_run_again_until_it_stops():
    sup, calls = Supervisor(), []
    register_secret("hunter2-token")

    async def step():
        calls.append(1)
        if len(calls) <= 2:
            raise RuntimeError("POST https://hooks.example/services/hunter2-token failed")
        if len(calls) == 4:
            raise Stopped

    asyncio.run(sup.run("deliver:slack", step, repeat=True))
    assert len(calls) == 4 and sup.errors == {"deliver:slack": 2}
    assert "hunter2" not in sup.last_error["deliver:slack"] and "hooks.example" in sup.last_error["deliver:slack"]


def test_without_repeat_the_task_ends_when_its_step_returns():
    sup, calls = Supervisor(), []

    async def step():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("once")

    asyncio.run(sup.run("source:x", step))
    assert len(calls) == 2 and sup.errors["source:x"] == 1


def test_a_stop_deadline_ends_a_failing_task_instead_of_sleeping_past_it():
    sup = Supervisor()

    async def main():
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.05

        async def step():
            raise OSError("store locked")

        await sup.run("timers", step, repeat=True, stop_at=lambda: deadline)

    asyncio.run(main())
    assert 1 <= sup.errors["timers"] <= 2


def test_cancellation_passes_through():
    sup = Supervisor()

    async def main():
        async def step():
            await asyncio.sleep(10)

        t = asyncio.create_task(sup.run("processor", step, repeat=True))
        await asyncio.sleep(0)
        t.cancel()
        try:
            await t
        except asyncio.CancelledError:
            return "cancelled"

    assert asyncio.run(main()) == "cancelled" and not sup.errors
