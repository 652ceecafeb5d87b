"""Run a long-lived server until it is told to stop, in two stages.

The first SIGTERM or SIGINT starts a graceful drain: the server's ``close``
with its grace period, during which calls in flight finish. A second signal
stops at once: the drain is cancelled, which makes the server's close skip
what is left of the grace period and release the rest without waiting.
SIGHUP, for a server that has a ``reload``, re-reads what can change without
a restart (token files, TLS certificates) and keeps serving. SIGUSR1 logs
what every task of the process waits on (``gitquorum.task_dump``) and keeps
serving.

Under systemd (``Type=notify``) the process says when it serves, reloads and
stops, and pings the watchdog from its event loop (``gitquorum.sdnotify``).

Servers assemble themselves with ``contextlib.AsyncExitStack``: each start-up
step registers its own cleanup as soon as it has opened something, so a start
that fails half-way (a port already taken) closes what it opened, and
``close`` unwinds the same stack in reverse order.

This module knows nothing of proxies, nodes or gateways: they depend on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import grpc

from gitquorum import log, sdnotify, task_dump

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT)


class Server(Protocol):
    """What run_until_signalled drives: start, then close with a grace period."""

    async def start(self) -> None: ...

    async def close(self, grace: float | None = None) -> None: ...


class Assembled:
    """A server assembled on one exit stack: ``close`` unwinds it once, in reverse.

    ``start`` builds its steps on an ``AsyncExitStack`` and keeps it in
    ``_stack`` once every step succeeded (``stack.pop_all()``); the last step it
    pushes is the server's drain, so ``close`` drains before anything else is
    released. ``_grace`` is the grace period of the close in progress, read by
    that drain step.
    """

    def __init__(self, default_grace: float) -> None:
        self._stack: contextlib.AsyncExitStack | None = None
        self._default_grace = default_grace
        self._grace = default_grace
        self._closed = asyncio.Event()

    async def close(self, grace: float | None = None) -> None:
        """Drain within ``grace`` (None: the configured one), then release
        everything start() opened. Cancelled (a second signal), the drain ends
        at once and the rest is released without waiting."""
        self._grace = self._default_grace if grace is None else grace
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()


class ListenError(OSError):
    """A server cannot listen on its address (taken, or not an address of this host)."""

    def __init__(self, address: str, reason: object) -> None:
        super().__init__(f"cannot listen on {address}: {reason}")
        self.address = address


def bind_port(
    server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None = None
) -> int:
    """Bind a gRPC server to ``listen`` (TLS with ``credentials``); the port, or ListenError."""
    try:
        if credentials is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, credentials)
    except RuntimeError as exc:
        # grpc raises "Failed to bind to address ..." and logs the cause itself.
        raise ListenError(listen, "address in use or not available") from exc
    if port == 0:  # older grpc releases answer 0 instead of raising
        raise ListenError(listen, "address in use or not available")
    return port


@contextlib.contextmanager
def _signals_to(
    loop: asyncio.AbstractEventLoop, signals: Sequence[signal.Signals], queue: asyncio.Queue[int]
) -> Iterator[None]:
    """Deliver ``signals`` to ``queue`` while the block runs; restore the old handlers after."""
    previous: dict[signal.Signals, Any] = {sig: signal.getsignal(sig) for sig in signals}
    try:
        for sig in signals:
            loop.add_signal_handler(sig, queue.put_nowait, int(sig))
        yield
    finally:
        for sig, handler in previous.items():
            loop.remove_signal_handler(sig)
            # remove_signal_handler resets to the default; put back whatever was there.
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


async def _first(task: asyncio.Future[Any], received: asyncio.Queue[int]) -> int | None:
    """Wait for ``task`` to end or a signal to arrive; the signal number, or None."""
    getter = asyncio.ensure_future(received.get())
    try:
        await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        # Cancelled ourselves: so is the start or close we waited for, which unwinds.
        task.cancel()
        await asyncio.wait({task})
        raise
    finally:
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    return None


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` and wait until it has unwound (its cancellation is not ours)."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and (error := task.exception()) is not None:
        raise error


async def run_until_signalled(
    server: Server,
    *,
    grace: float,
    ready: Callable[[], None] | None = None,
    signals: Sequence[signal.Signals] = STOP_SIGNALS,
    logger_name: str = "gitquorum",
    reload: Callable[[], None] | None = None,
) -> None:
    """Start ``server``, serve until a signal, drain; a second signal stops at once.

    ``grace``: the drain's grace period, passed to ``server.close``. ``ready``
    runs once the server serves (e.g. writes the ready file). A signal during
    start-up cancels the start, which closes whatever it had opened. With
    ``reload``, SIGHUP calls it (a failure is logged; the server keeps what it had).
    """
    logger = log.get(logger_name)
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[int] = asyncio.Queue()
    handled = (*signals, signal.SIGHUP) if reload is not None else tuple(signals)
    with _signals_to(loop, handled, received), _task_dumps(loop):
        starting = asyncio.ensure_future(server.start())
        sig = await _first(starting, received)
        # A reload before serving has nothing to do: the start reads every file anyway.
        while sig == signal.SIGHUP and not starting.done():
            sig = await _first(starting, received)
        if sig == signal.SIGHUP:
            sig = None
        if sig is not None and not starting.done():
            logger.info("stopping before serving", extra=log.fields(signal=_name(sig)))
            await _cancel(starting)
            return
        starting.result()  # a failed start raises here, after closing what it opened
        pinging = _start_watchdog(loop)
        try:
            if ready is not None:
                ready()
            sdnotify.notify(sdnotify.READY)
            if sig is None:
                sig = await received.get()
            while sig == signal.SIGHUP and reload is not None:
                _reload(reload, logger)
                sig = await received.get()
        except BaseException:
            if pinging is not None:
                pinging.cancel()
            await server.close(0.0)  # e.g. the ready file cannot be written
            raise
        sdnotify.notify(sdnotify.STOPPING)
        logger.info("draining", extra=log.fields(grace_seconds=grace, signal=_name(sig)))
        closing = asyncio.ensure_future(server.close(grace))
        # The watchdog keeps being fed while the drain runs (up to the grace period).
        if pinging is not None:
            closing.add_done_callback(lambda _done: pinging.cancel())
        again = await _first(closing, received)
        while again == signal.SIGHUP and not closing.done():
            again = await _first(closing, received)  # no reload while draining
        if again is not None and not closing.done():
            logger.warning("stopping at once", extra=log.fields(signal=_name(again)))
            await _cancel(closing)
            return
        closing.result()


@contextlib.contextmanager
def _task_dumps(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """SIGUSR1 logs every task's await chain while the block runs."""
    previous = signal.getsignal(signal.SIGUSR1)
    loop.add_signal_handler(signal.SIGUSR1, task_dump.log_task_dump)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        signal.signal(signal.SIGUSR1, previous if previous is not None else signal.SIG_DFL)


def _start_watchdog(loop: asyncio.AbstractEventLoop) -> asyncio.Task[None] | None:
    interval = sdnotify.watchdog_interval()
    if interval is None:
        return None
    return loop.create_task(sdnotify.watchdog(interval), name="sd-watchdog")


def _reload(reload: Callable[[], None], logger: Any) -> None:
    sdnotify.notify(sdnotify.RELOADING)
    try:
        reload()
        logger.info("reloaded", extra=log.fields(signal="SIGHUP"))
    except Exception as exc:  # a bad new file must not stop a serving process
        logger.error("reload failed; serving with what was loaded before: %s", exc)
    finally:
        sdnotify.notify(sdnotify.READY)


def _name(sig: int) -> str:
    with contextlib.suppress(ValueError):
        return signal.Signals(sig).name
    return str(sig)
