"""The periodic loop: a pass every interval or on wake-up, surviving store outages."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.periodic import run_periodically


async def settle() -> None:
    # Let the loop's task run up to its next pause (no time passes on a ManualClock).
    for _ in range(20):
        await asyncio.sleep(0)


class Passes:
    """A pass that records when it ran and plays scripted failures."""

    def __init__(self, clock: ManualClock, *failures: Exception | None) -> None:
        self.clock = clock
        self.failures = list(failures)
        self.times: list[float] = []

    async def __call__(self) -> int:
        self.times.append(self.clock.now())
        if self.failures:
            failure = self.failures.pop(0)
            if failure is not None:
                raise failure
        return len(self.times)

    def since(self, start: float) -> list[float]:
        return [round(t - start, 6) for t in self.times]


@contextlib.asynccontextmanager
async def running(loop: Awaitable[None]) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.ensure_future(loop)
    await settle()
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_runs_a_pass_every_interval() -> None:
    clock = ManualClock()
    start = clock.now()
    passes = Passes(clock)
    async with running(run_periodically(passes, 5.0, clock=clock)):
        assert passes.since(start) == [0.0]
        clock.advance(4.9)
        await settle()
        assert passes.since(start) == [0.0]
        clock.advance(0.1)
        await settle()
        clock.advance(5.0)
        await settle()
        assert passes.since(start) == [0.0, 5.0, 10.0]


async def test_runs_early_when_woken() -> None:
    clock = ManualClock()
    start = clock.now()
    passes = Passes(clock)
    wake = asyncio.Event()
    async with running(run_periodically(passes, 60.0, wake=wake, clock=clock)):
        clock.advance(1.0)
        wake.set()
        await settle()
        assert passes.since(start) == [0.0, 1.0]
        assert not wake.is_set()  # cleared before the pass
        clock.advance(60.0)  # the interval counts again from the early pass
        await settle()
        assert passes.since(start) == [0.0, 1.0, 61.0]


async def test_a_wake_up_during_a_pass_runs_the_next_one_at_once() -> None:
    clock = ManualClock()
    wake = asyncio.Event()
    calls = 0

    async def pass_() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            wake.set()  # the world changed while this pass ran

    async with running(run_periodically(pass_, 60.0, wake=wake, clock=clock)):
        assert calls == 2


async def test_survives_a_pass_that_finds_the_store_unavailable() -> None:
    clock = ManualClock()
    start = clock.now()
    outage = StoreUnavailable("etcd down")
    passes = Passes(clock, outage, None)
    errors: list[Exception] = []
    async with running(run_periodically(passes, 2.0, on_error=errors.append, clock=clock)) as task:
        assert errors == [outage]
        clock.advance(2.0)
        await settle()
        assert passes.since(start) == [0.0, 2.0]
        assert not task.done()


async def test_any_other_error_ends_the_loop() -> None:
    clock = ManualClock()
    passes = Passes(clock, RuntimeError("bug"))
    with pytest.raises(RuntimeError, match="bug"):
        await asyncio.wait_for(run_periodically(passes, 2.0, clock=clock), 5)


async def test_errors_can_be_widened() -> None:
    clock = ManualClock()
    passes = Passes(clock, RuntimeError("checksum failed"))
    errors: list[Exception] = []
    loop = run_periodically(passes, 2.0, errors=(Exception,), on_error=errors.append, clock=clock)
    async with running(loop) as task:
        assert [str(e) for e in errors] == ["checksum failed"]
        assert not task.done()


async def test_cancel_ends_the_loop_between_passes() -> None:
    clock = ManualClock()
    passes = Passes(clock)
    task = asyncio.ensure_future(run_periodically(passes, 2.0, wake=asyncio.Event(), clock=clock))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    clock.advance(10.0)
    await settle()
    assert len(passes.times) == 1


async def test_cancel_ends_the_loop_inside_a_pass() -> None:
    clock = ManualClock()
    started = asyncio.Event()
    finished = False

    async def slow_pass() -> None:
        nonlocal finished
        started.set()
        await asyncio.Event().wait()
        finished = True

    task = asyncio.ensure_future(run_periodically(slow_pass, 2.0, clock=clock))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not finished


IntervalFn = Callable[[int | None], float]


async def test_interval_may_depend_on_the_pass() -> None:
    clock = ManualClock()
    start = clock.now()
    # Passes 1 and 2 found work (short rest); a failed pass rests as long as an idle one.
    passes = Passes(clock, None, StoreUnavailable("x"))
    interval: IntervalFn = lambda n: 1.0 if n else 5.0  # noqa: E731
    async with running(run_periodically(passes, interval, clock=clock)):
        clock.advance(1.0)
        await settle()
        clock.advance(4.9)
        await settle()
        assert passes.since(start) == [0.0, 1.0]
        clock.advance(0.1)
        await settle()
        assert passes.since(start) == [0.0, 1.0, 6.0]


async def test_from_start_keeps_a_fixed_rate() -> None:
    clock = ManualClock()
    start = clock.now()
    times: list[float] = []

    async def slow_pass() -> None:
        times.append(clock.now() - start)
        await clock.sleep(0.4)  # the pass itself takes 0.4 s

    async with running(run_periodically(slow_pass, 1.0, from_start=True, clock=clock)):
        for _ in range(20):
            clock.advance(0.1)
            await settle()
    assert [round(t, 6) for t in times] == [0.0, 1.0, 2.0]


async def test_delay_first_pauses_before_the_first_pass() -> None:
    clock = ManualClock()
    start = clock.now()
    passes = Passes(clock)
    async with running(run_periodically(passes, 3.0, delay_first=True, clock=clock)):
        assert passes.times == []
        clock.advance(3.0)
        await settle()
        assert passes.since(start) == [3.0]
