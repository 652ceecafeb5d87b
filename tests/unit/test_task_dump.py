"""SIGUSR1: a serving process logs what each of its tasks waits on, and serves on."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest

from gitquorum import task_dump
from gitquorum.lifecycle import run_until_signalled
from tests.unit.test_lifecycle import WAIT, FakeServer


async def _innermost(gate: asyncio.Event) -> None:
    await gate.wait()


async def _middle(gate: asyncio.Event) -> None:
    await _innermost(gate)


async def _outer(gate: asyncio.Event) -> None:
    await _middle(gate)


async def test_the_chain_follows_every_coroutine_to_what_the_innermost_awaits() -> None:
    gate = asyncio.Event()
    task = asyncio.create_task(_outer(gate), name="stuck-repair")
    await asyncio.sleep(0)  # let it reach its wait
    try:
        (found,) = [t for t in task_dump.task_stacks() if t["task"] == "stuck-repair"]
        waits = found["waits"]
        assert isinstance(waits, list)
        functions = [frame.split(" ")[-1] for frame in waits]
        # Task.get_stack would give _outer alone.
        assert functions[:3] == ["_outer", "_middle", "_innermost"]
        assert "Event.wait" in functions[3]
        assert waits[0].startswith("unit/test_task_dump.py:")
        # What Event.wait sits on: a Future (its C iterator in CPython).
        assert functions[-1] in ("Future", "FutureIter"), waits
    finally:
        gate.set()
        await task
    assert all(t["task"] != "stuck-repair" for t in task_dump.task_stacks()), "done tasks go"


class _OnRecord(logging.Handler):
    def __init__(self, event: asyncio.Event) -> None:
        super().__init__()
        self.event = event

    def emit(self, record: logging.LogRecord) -> None:
        self.event.set()  # on the loop's thread: the dump runs in a signal callback


async def test_sigusr1_logs_the_dump_and_the_server_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, serving = FakeServer(), asyncio.Event()
    gate = asyncio.Event()
    stuck = asyncio.create_task(_outer(gate), name="stuck-repair")
    runner = asyncio.create_task(
        run_until_signalled(server, grace=1.0, ready=serving.set), name="runner"
    )
    try:
        async with asyncio.timeout(WAIT):
            await serving.wait()
        logged = asyncio.Event()
        seen = _OnRecord(logged)
        logging.getLogger("gitquorum.tasks").addHandler(seen)
        try:
            with caplog.at_level(logging.WARNING, logger="gitquorum.tasks"):
                os.kill(os.getpid(), signal.SIGUSR1)
                async with asyncio.timeout(WAIT):
                    await logged.wait()
        finally:
            logging.getLogger("gitquorum.tasks").removeHandler(seen)
        (line,) = [r for r in caplog.records if r.getMessage() == "task dump"]
        tasks = {t["task"]: t["waits"] for t in line.fields["tasks"]}  # type: ignore[attr-defined]
        assert "stuck-repair" in tasks and "runner" in tasks
        assert any("_innermost" in frame for frame in tasks["stuck-repair"])
        # Not a stop signal: still serving, nothing closed.
        await asyncio.sleep(0.05)
        assert not runner.done() and not server.closing.is_set()
    finally:
        os.kill(os.getpid(), signal.SIGTERM)
        server.idle.set()
        async with asyncio.timeout(WAIT):
            await runner
        gate.set()
        await stuck
    # Put back as it was: the default action of SIGUSR1 again.
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)
