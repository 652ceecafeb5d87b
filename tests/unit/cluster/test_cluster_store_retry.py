"""The store retry policy: transient store failures retried with backoff, bounded."""

from __future__ import annotations

import time

import pytest
from tenacity import wait_fixed

from gitquorum.cluster.errors import (
    Compacted,
    Conflict,
    LeaseExpired,
    StoreUnavailable,
)
from gitquorum.cluster.store_retry import (
    INITIAL_WAIT,
    MAX_WAIT,
    StoreRetry,
    report,
    store_failure,
    transient,
)


class Flaky:
    """Fails with ``failures`` in order, then returns "ok"."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


class FakeSleep:
    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (StoreUnavailable("down"), True),
        (LeaseExpired("gone"), False),
        (Compacted("old"), False),
        (Conflict("race"), False),
        (RuntimeError("bug"), False),
    ],
)
def test_transient(error: Exception, expected: bool) -> None:
    assert transient(error) is expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [(StoreUnavailable("down"), True), (LeaseExpired("gone"), True), (Conflict("x"), False)],
)
def test_store_failure(error: Exception, expected: bool) -> None:
    assert store_failure(error) is expected


async def test_retries_store_unavailable_with_growing_jittered_waits() -> None:
    fn = Flaky(StoreUnavailable("a"), StoreUnavailable("b"), StoreUnavailable("c"))
    sleep = FakeSleep()
    assert await StoreRetry(attempts=5, sleep=sleep)(fn) == "ok"
    assert fn.calls == 4
    assert len(sleep.waits) == 3
    for number, wait in enumerate(sleep.waits):
        base = min(MAX_WAIT, INITIAL_WAIT * 2**number)
        assert base <= wait <= base + INITIAL_WAIT


async def test_waits_are_capped() -> None:
    fn = Flaky(*(StoreUnavailable(str(i)) for i in range(8)))
    sleep = FakeSleep()
    assert await StoreRetry(attempts=10, sleep=sleep)(fn) == "ok"
    assert max(sleep.waits) <= MAX_WAIT + INITIAL_WAIT
    assert sleep.waits[-1] >= MAX_WAIT


async def test_stops_after_the_attempts_with_the_last_error() -> None:
    last = StoreUnavailable("third")
    fn = Flaky(StoreUnavailable("first"), StoreUnavailable("second"), last)
    sleep = FakeSleep()
    with pytest.raises(StoreUnavailable) as raised:
        await StoreRetry(attempts=3, sleep=sleep)(fn)
    assert raised.value is last
    assert fn.calls == 3
    assert len(sleep.waits) == 2


async def test_one_attempt_is_a_plain_call() -> None:
    fn = Flaky(StoreUnavailable("down"))
    sleep = FakeSleep()
    with pytest.raises(StoreUnavailable):
        await StoreRetry(attempts=1, sleep=sleep)(fn)
    assert fn.calls == 1 and sleep.waits == []


async def test_stops_at_the_deadline() -> None:
    fn = Flaky(*(StoreUnavailable(str(i)) for i in range(10_000)))
    started = time.monotonic()
    with pytest.raises(StoreUnavailable):
        await StoreRetry(deadline=0.05, wait=wait_fixed(0.01))(fn)
    elapsed = time.monotonic() - started
    # Tried a few times, then gave up once the deadline passed (not 10 000 times).
    assert 2 <= fn.calls < 100
    assert elapsed < 2.0


@pytest.mark.parametrize("error", [LeaseExpired("gone"), Compacted("old"), RuntimeError("bug")])
async def test_non_transient_errors_pass_through_at_once(error: Exception) -> None:
    fn = Flaky(error)
    sleep = FakeSleep()
    with pytest.raises(type(error)):
        await StoreRetry(attempts=5, sleep=sleep)(fn)
    assert fn.calls == 1 and sleep.waits == []


async def test_success_first_time_never_waits() -> None:
    fn = Flaky()
    sleep = FakeSleep()
    assert await StoreRetry(attempts=5, sleep=sleep)(fn) == "ok"
    assert fn.calls == 1 and sleep.waits == []


async def test_before_retry_sees_each_retried_failure() -> None:
    first, second = StoreUnavailable("a"), LeaseExpired("b")
    fn = Flaky(first, second)
    seen: list[BaseException] = []
    result = await StoreRetry(
        retry_on=store_failure,
        wait=wait_fixed(0),
        before_retry=report(seen.append),
        sleep=FakeSleep(),
    )(fn)
    assert result == "ok"
    assert seen == [first, second]


async def test_arguments_are_passed_on() -> None:
    async def add(a: int, *, b: int) -> int:
        return a + b

    assert await StoreRetry(attempts=2)(add, 1, b=2) == 3
