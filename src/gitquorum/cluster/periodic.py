"""Background work done in passes: every interval, or sooner when woken.

The leader's failover, reconciler, orphan recovery and gauges, the health
checker and the verifier all run the same way: a pass, then a pause until the
interval is over or an event says there is work now. A pass that fails
because the store is unreachable is reported and the next pass comes as
usual (the cluster heals, the loop must outlive the outage); cancelling the
task ends the loop at once, between passes or inside one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

from gitquorum import log
from gitquorum.cluster.clock import REAL_CLOCK, Clock
from gitquorum.cluster.errors import StoreUnavailable

T = TypeVar("T")

OnError = Callable[[Exception], None]


def warn(logger: logging.Logger, message: str) -> OnError:
    """Report a failed pass as one warning with the error as a field."""

    def report(exc: Exception) -> None:
        logger.warning(message, extra=log.fields(error=str(exc)))

    return report


def ignore(_exc: Exception) -> None:
    return None


async def run_periodically(
    run_pass: Callable[[], Awaitable[T]],
    interval: float | Callable[[T | None], float],
    *,
    wake: asyncio.Event | None = None,
    on_error: OnError = ignore,
    errors: tuple[type[Exception], ...] = (StoreUnavailable,),
    from_start: bool = False,
    delay_first: bool = False,
    clock: Clock = REAL_CLOCK,
) -> NoReturn:
    """Run ``run_pass`` forever (until cancelled).

    ``interval`` is seconds, or a function of the pass's result (None when it
    failed) for loops that rest longer when there was nothing to do. The pause
    is measured from the end of a pass, or from its start with ``from_start``
    (a fixed rate, whatever a pass costs). ``wake`` ends a pause early; it is
    cleared before each pass, so a wake-up during a pass runs the next one at
    once. A pass raising one of ``errors`` is handed to ``on_error``; anything
    else ends the loop with that error. ``delay_first`` pauses before the
    first pass.
    """
    if delay_first:
        await _pause(_seconds(interval, None), wake, clock)
    while True:
        if wake is not None:
            wake.clear()
        started = clock.now()
        result: T | None
        try:
            result = await run_pass()
        except errors as exc:
            on_error(exc)
            result = None
        delay = _seconds(interval, result)
        if from_start:
            delay -= clock.now() - started
        await _pause(max(0.0, delay), wake, clock)


def _seconds(interval: float | Callable[[T | None], float], result: T | None) -> float:
    return interval(result) if callable(interval) else interval


async def _pause(seconds: float, wake: asyncio.Event | None, clock: Clock) -> None:
    if wake is None:
        await clock.sleep(seconds)
        return
    if wake.is_set():
        return
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    woken = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait((sleeper, woken), return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        woken.cancel()
