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

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base
from tenacity.wait import WaitBaseT

from gitquorum.cluster.errors import Compacted, LeaseExpired, StoreUnavailable

Sleep = Callable[[float], Awaitable[None]]
BeforeRetry = Callable[[RetryCallState], Awaitable[None]]

# First wait and cap of the exponential backoff between attempts.
INITIAL_WAIT = 0.05
MAX_WAIT = 0.5


def transient(exc: BaseException) -> bool:
    """A store failure that another attempt may not meet."""
    return isinstance(exc, StoreUnavailable) and not isinstance(exc, LeaseExpired | Compacted)


def backoff(initial: float = INITIAL_WAIT, maximum: float = MAX_WAIT) -> WaitBaseT:
    """initial, 2 x initial, ... up to ``maximum``, each plus up to ``initial`` of jitter."""
    return wait_exponential_jitter(initial=initial, max=maximum, jitter=initial)


def store_retry(
    *,
    attempts: int | None = None,
    deadline: float | None = None,
    wait: WaitBaseT | None = None,
    retry_on: Callable[[BaseException], bool] = transient,
    before_retry: BeforeRetry | None = None,
    sleep: Sleep = asyncio.sleep,
) -> AsyncRetrying:
    """A policy: ``await store_retry(attempts=3)(fn, *args)`` calls ``fn`` until
    it returns, raises something ``retry_on`` rejects, or the attempts or the
    deadline (seconds since the first attempt) run out; then the last error is
    raised as it was. ``before_retry`` runs before each wait (e.g. to log, or
    to re-authenticate); ``sleep`` is injectable so tests need not wait."""
    stop: stop_base = stop_never
    if attempts is not None:
        stop = stop | stop_after_attempt(max(1, attempts))
    if deadline is not None:
        stop = stop | stop_after_delay(deadline)
    return AsyncRetrying(
        sleep=sleep,
        stop=stop,
        wait=wait if wait is not None else backoff(),
        retry=retry_if_exception(retry_on),
        before_sleep=before_retry,
        reraise=True,
    )
