"""The retry policy for calls to a store that may be briefly unreachable.

An etcd member killed or partitioned, or a leader election in progress, fails
calls for a moment; trying again a little later, on another member, usually
works. What is worth another try is decided here once: every
:class:`~gitquorum.cluster.errors.StoreUnavailable` except a lost lease and
compacted history, which no repetition can fix. Waits grow exponentially with
jitter (racing proxies do not retry in lock-step) and stop after a number of
attempts or a deadline, whichever comes first. Whether a call is *safe* to
repeat (a txn whose answer was lost may have been applied) is the caller's
decision: only wrap calls that are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_exponential,
    wait_random,
)
from tenacity.stop import stop_base
from tenacity.wait import WaitBaseT

from gitquorum.cluster.errors import Compacted, LeaseExpired, StoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")

Sleep = Callable[[float], Awaitable[None]]
BeforeRetry = Callable[[RetryCallState], Awaitable[None]]

# First wait and cap of the exponential backoff between attempts.
INITIAL_WAIT = 0.05
MAX_WAIT = 0.5


def transient(exc: BaseException) -> bool:
    """A store failure that another attempt may not meet."""
    return isinstance(exc, StoreUnavailable) and not isinstance(exc, LeaseExpired | Compacted)


def store_failure(exc: BaseException) -> bool:
    """Any store failure, a lost lease included: for loops that must get through
    (re-registering, re-reading a view) and build everything afresh each try."""
    return isinstance(exc, StoreUnavailable)


def report(callback: Callable[[BaseException], None]) -> BeforeRetry:
    """A ``before_retry`` that hands the failure that is being retried to ``callback``."""

    async def before_retry(state: RetryCallState) -> None:
        if state.outcome is not None:
            failure = state.outcome.exception()
            if failure is not None:
                callback(failure)

    return before_retry


def backoff(initial: float = INITIAL_WAIT, maximum: float = MAX_WAIT) -> WaitBaseT:
    """initial, 2 x initial, ... up to ``maximum``, each plus up to ``initial`` of jitter."""
    return wait_exponential(multiplier=initial, max=maximum) + wait_random(0, initial)


class StoreRetry:
    """A policy: ``await StoreRetry(attempts=3)(fn, *args)`` calls ``fn`` until it
    returns, raises something ``retry_on`` rejects, or the attempts or the
    deadline (seconds since the first retry) run out; then the last error is
    raised as it was. ``before_retry`` runs before each wait (e.g. to log, or to
    re-authenticate); ``sleep`` is injectable so tests need not wait.

    The first attempt is a plain call: tenacity's bookkeeping costs tens of
    microseconds, as much as a tenth of an etcd round trip, so it is only set
    up once a call has failed (it then sees that failure as its first attempt).
    """

    def __init__(
        self,
        *,
        attempts: int | None = None,
        deadline: float | None = None,
        wait: WaitBaseT | None = None,
        retry_on: Callable[[BaseException], bool] = transient,
        before_retry: BeforeRetry | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.attempts = attempts
        self.deadline = deadline
        self.wait = wait if wait is not None else backoff()
        self.retry_on = retry_on
        self.before_retry = before_retry
        self.sleep = sleep

    def retrying(self) -> AsyncRetrying:
        stop: stop_base = stop_never
        if self.attempts is not None:
            stop = stop | stop_after_attempt(max(1, self.attempts))
        if self.deadline is not None:
            stop = stop | stop_after_delay(self.deadline)
        return AsyncRetrying(
            sleep=self.sleep,
            stop=stop,
            wait=self.wait,
            retry=retry_if_exception(self.retry_on),
            before_sleep=self.before_retry,
            reraise=True,
        )

    async def __call__(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await fn(*args, **kwargs)
        except Exception as exc:
            if not self.retry_on(exc) or self.attempts == 1:
                raise
            first: Exception | None = exc

        async def again() -> T:
            nonlocal first
            if first is not None:
                failure, first = first, None
                raise failure
            return await fn(*args, **kwargs)

        return await self.retrying()(again)
