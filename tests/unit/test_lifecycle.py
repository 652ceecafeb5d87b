"""run_until_signalled with a fake server and real signals sent to this process."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from collections.abc import Iterator
from types import FrameType

import grpc
import pytest

from gitquorum.lifecycle import ListenError, bind_port, run_until_signalled

WAIT = 5.0  # deadline of every wait below; none should come close


class FakeServer:
    """Records what the helper does; its close drains until ``idle`` is set."""

    def __init__(self, *, fail_start: bool = False, hold_start: bool = False) -> None:
        self.fail_start = fail_start
        self.hold_start = hold_start
        self.starting = asyncio.Event()
        self.started = False
        self.start_unwound = False
        self.closing = asyncio.Event()
        self.idle = asyncio.Event()  # the call in flight during the drain has ended
        self.graces: list[float | None] = []
        self.outcome = ""

    async def start(self) -> None:
        self.starting.set()
        try:
            if self.hold_start:
                await asyncio.Event().wait()
            if self.fail_start:
                raise ListenError("127.0.0.1:1", "address in use")
        except BaseException:
            self.start_unwound = True  # what a real server's exit stack does
            raise
        self.started = True

    async def close(self, grace: float | None = None) -> None:
        self.graces.append(grace)
        self.closing.set()
        try:
            await self.idle.wait()
        except asyncio.CancelledError:
            self.outcome = "stopped at once"
            raise
        self.outcome = "drained"


@pytest.fixture
def own_handlers() -> Iterator[dict[signal.Signals, object]]:
    """Python-level handlers installed before the test, expected back afterwards."""

    def marker(_sig: int, _frame: FrameType | None) -> None:
        raise AssertionError("a signal reached the handler the helper should have replaced")

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in saved:
        signal.signal(sig, marker)
    yield {sig: marker for sig in saved}
    for sig, handler in saved.items():
        signal.signal(sig, handler)  # type: ignore[arg-type]


def _kill(sig: signal.Signals) -> None:
    os.kill(os.getpid(), sig)


async def _run(server: FakeServer, ready: list[bool], grace: float = 30.0) -> asyncio.Task[None]:
    serving = asyncio.Event()

    def on_ready() -> None:
        ready.append(True)
        serving.set()

    task = asyncio.create_task(run_until_signalled(server, grace=grace, ready=on_ready))
    async with asyncio.timeout(WAIT):
        await serving.wait()
    return task


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT])
async def test_first_signal_drains_with_the_grace_period(
    first: signal.Signals, own_handlers: dict[signal.Signals, object]
) -> None:
    server, ready = FakeServer(), []
    task = await _run(server, ready, grace=12.5)
    assert server.started and ready == [True]
    assert not server.closing.is_set(), "nothing closes before a signal"
    _kill(first)
    async with asyncio.timeout(WAIT):
        await server.closing.wait()
    assert server.graces == [12.5]
    # Draining: the helper waits for the call in flight instead of returning.
    await asyncio.sleep(0.05)
    assert not task.done()
    server.idle.set()
    async with asyncio.timeout(WAIT):
        await task
    assert server.outcome == "drained"
    for sig, handler in own_handlers.items():
        assert signal.getsignal(sig) is handler


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (signal.SIGTERM, signal.SIGTERM),
        (signal.SIGINT, signal.SIGINT),
        (signal.SIGTERM, signal.SIGINT),
    ],
)
async def test_second_signal_stops_at_once(
    first: signal.Signals, second: signal.Signals, own_handlers: dict[signal.Signals, object]
) -> None:
    server, ready = FakeServer(), []
    task = await _run(server, ready, grace=3600.0)
    _kill(first)
    async with asyncio.timeout(WAIT):
        await server.closing.wait()
    assert not task.done()
    _kill(second)
    async with asyncio.timeout(WAIT):  # not the hour of grace
        await task
    assert server.outcome == "stopped at once"
    assert server.graces == [3600.0], "one close, cut short: not a second close"
    for sig, handler in own_handlers.items():
        assert signal.getsignal(sig) is handler


async def test_a_signal_during_start_cancels_the_start(
    own_handlers: dict[signal.Signals, object],
) -> None:
    server, ready = FakeServer(hold_start=True), []
    task = asyncio.create_task(
        run_until_signalled(server, grace=30.0, ready=lambda: ready.append(True))
    )
    async with asyncio.timeout(WAIT):
        await server.starting.wait()
    _kill(signal.SIGTERM)
    async with asyncio.timeout(WAIT):
        await task
    assert server.start_unwound and not server.started
    assert not ready and not server.closing.is_set()
    for sig, handler in own_handlers.items():
        assert signal.getsignal(sig) is handler


async def test_a_failed_start_raises_and_restores_the_handlers(
    own_handlers: dict[signal.Signals, object],
) -> None:
    server, ready = FakeServer(fail_start=True), []
    with pytest.raises(
        ListenError, match=re.escape("cannot listen on 127.0.0.1:1: address in use")
    ):
        await run_until_signalled(server, grace=30.0, ready=lambda: ready.append(True))
    assert server.start_unwound and not ready and not server.closing.is_set()
    for sig, handler in own_handlers.items():
        assert signal.getsignal(sig) is handler


async def test_a_failing_ready_callback_closes_the_server_at_once(
    own_handlers: dict[signal.Signals, object],
) -> None:
    server = FakeServer()
    server.idle.set()

    def ready() -> None:
        raise PermissionError("ready file")

    with pytest.raises(PermissionError):
        await run_until_signalled(server, grace=30.0, ready=ready)
    assert server.started and server.graces == [0.0] and server.outcome == "drained"
    for sig, handler in own_handlers.items():
        assert signal.getsignal(sig) is handler


async def test_cancelling_the_helper_while_draining_cuts_the_drain(
    own_handlers: dict[signal.Signals, object],
) -> None:
    server, ready = FakeServer(), []
    task = await _run(server, ready, grace=3600.0)
    _kill(signal.SIGTERM)
    async with asyncio.timeout(WAIT):
        await server.closing.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(WAIT):
            await task
    assert server.outcome == "stopped at once"
    for sig, handler in own_handlers.items():
        assert signal.getsignal(sig) is handler


@pytest.mark.parametrize(
    ("address", "reason", "message"),
    [
        ("127.0.0.1:8075", "address in use", "cannot listen on 127.0.0.1:8075: address in use"),
        ("[::1]:0", OSError(99, "not here"), "cannot listen on [::1]:0: [Errno 99] not here"),
    ],
)
def test_listen_error_names_the_address(address: str, reason: object, message: str) -> None:
    error = ListenError(address, reason)
    assert isinstance(error, OSError)
    assert str(error) == message and error.address == address


@pytest.mark.parametrize("taken", [True, False])
async def test_bind_port(taken: bool) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    if not taken:
        holder.close()
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    try:
        if taken:
            with pytest.raises(ListenError, match=re.escape(f"cannot listen on 127.0.0.1:{port}")):
                bind_port(server, f"127.0.0.1:{port}")
        else:
            assert bind_port(server, f"127.0.0.1:{port}") == port
    finally:
        await server.stop(0)
        holder.close()
