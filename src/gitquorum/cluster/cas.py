"""The compare-and-swap loop every domain update of etcd state goes through.

An update reads the current value, computes the new one, and writes it in a
txn that holds only if nothing changed since the read (the read's
``mod_revision``, or "nothing under this prefix changed"). When another writer
won the race the txn fails and the whole round starts again from a fresh read,
so no update is lost and each decision is taken on the value it replaces. The
loop is bounded: a key that keeps changing under us is reported (usually as
:class:`~gitquorum.cluster.errors.Conflict`) instead of spinning forever.

What an attempt does is the caller's: it returns its result, or :data:`RETRY`
when its txn lost the race. Anything it raises (a refused change, the store
unavailable) ends the loop unchanged: races are the only thing retried here;
what to do about an unreachable store is a retry *policy*
(:mod:`gitquorum.cluster.store_retry`).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable
from typing import Final, Literal, NoReturn, TypeVar

from gitquorum.cluster.clock import REAL_CLOCK
from gitquorum.cluster.errors import Conflict

T = TypeVar("T")


class _Retry(enum.Enum):
    RETRY = "retry"


# Returned by an attempt whose compare failed: read again and retry.
RETRY: Final = _Retry.RETRY
Retry = Literal[_Retry.RETRY]

Attempt = Callable[[int], Awaitable[T | Retry]]
# Called with the number of the attempt that lost, before the next one.
Backoff = Callable[[int], Awaitable[None]]


async def no_backoff(_attempt: int) -> None:
    return None


def jittered_backoff(rng: random.Random, step: float = 0.001, cap: int = 20) -> Backoff:
    """Sleep a random time in [0, step * min(attempt, cap)): racing writers
    spread out so that one of them wins each round."""

    async def backoff(attempt: int) -> None:
        await REAL_CLOCK.sleep(rng.uniform(0, step * min(attempt, cap)))

    return backoff


def fixed_backoff(delay: float) -> Backoff:
    async def backoff(_attempt: int) -> None:
        await REAL_CLOCK.sleep(delay)

    return backoff


def conflict(message: str) -> Callable[[], NoReturn]:
    """Giving up as most updates do: the caller sees Conflict and may retry later."""

    def give_up() -> NoReturn:
        raise Conflict(message)

    return give_up


async def compare_and_swap(
    attempt: Attempt[T],
    *,
    attempts: int,
    give_up: Callable[[], T],
    backoff: Backoff = no_backoff,
) -> T:
    """Run ``attempt(n)`` for n = 0, 1, ... until it returns something other than
    :data:`RETRY`; after ``attempts`` lost races return (or raise) ``give_up()``,
    usually :func:`conflict`.

    ``backoff(n)`` runs between a lost attempt n and the next one (not after
    the last: there is nothing left to wait for).
    """
    for number in range(attempts):
        result = await attempt(number)
        if result is not RETRY:
            return result
        if number + 1 < attempts:
            await backoff(number)
    return give_up()
