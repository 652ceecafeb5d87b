"""Admission control: per-repository concurrency limits and the drain gate.

Both the proxy and the node admit a call in two steps:

* the **drain gate** refuses new calls with UNAVAILABLE once a SIGTERM drain
  has begun, and counts the calls in flight so the drain knows when it is done;
* a **per-repository limiter** caps how many mutators, and how many expensive
  reads (pack and archive streams), run at once on one repository. A call over
  the cap waits in a FIFO queue for at most ``queue_timeout`` (and never past
  its own deadline), then fails with RESOURCE_EXHAUSTED, as does a call that
  finds the queue full (``max_queued``). One busy repository therefore cannot
  take every git process and every byte of memory from the others.

The proxy keys limits by (virtual storage, relative path), the node by
(storage, relative path). Limits and defaults are documented in docs/limits.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Hashable
from dataclasses import dataclass, field, replace

from gitquorum import log
from gitquorum.config import LimitsConfig
from gitquorum.errors import DeadlineExceeded, ResourceExhausted, Unavailable

logger = log.get("gitquorum.limits")

# Reads that run git for as long as they stream a pack, bundle, snapshot or
# archive: each one costs a process, CPU and bandwidth proportional to the
# repository, unlike the short lookups served from long-lived cat-file processes.
EXPENSIVE_READS = frozenset(
    {
        "/gitaly.SSHService/SSHUploadPack",
        "/gitaly.SSHService/SSHUploadArchive",
        "/gitaly.SmartHTTPService/PostUploadPack",
        "/gitaly.RepositoryService/GetSnapshot",
        "/gitaly.RepositoryService/CreateBundle",
    }
)


@dataclass
class _Slots:
    """One repository's running calls and the queue waiting for a slot."""

    active: int = 0
    waiters: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)


class RepositoryLimiter:
    """At most ``limit`` calls at a time per key; the others queue, bounded in length and time.

    A released slot is handed to the oldest waiter directly, so a steady stream
    of newcomers cannot starve the queue. Idle keys are forgotten: memory grows
    with the repositories busy right now, not with every repository ever seen.
    ``limit`` 0 disables the limiter.
    """

    def __init__(self, kind: str, limit: int, max_queued: int, queue_timeout: float) -> None:
        self.kind = kind
        self.limit = limit
        self.max_queued = max_queued
        self.queue_timeout = queue_timeout
        self._slots: dict[Hashable, _Slots] = {}

    def active(self, key: Hashable) -> int:
        entry = self._slots.get(key)
        return entry.active if entry else 0

    def queued(self, key: Hashable) -> int:
        entry = self._slots.get(key)
        return len(entry.waiters) if entry else 0

    @property
    def tracked(self) -> int:
        """Keys with running or queued calls (bounded by the busy repositories)."""
        return len(self._slots)

    @contextlib.asynccontextmanager
    async def slot(self, key: Hashable, time_remaining: float | None = None) -> AsyncIterator[None]:
        """Hold one of the key's slots for the duration of the block.

        ``time_remaining`` is the call's own deadline: waiting past it is pointless.
        """
        if self.limit <= 0:
            yield
            return
        await self._acquire(key, time_remaining)
        try:
            yield
        finally:
            self._release(key)

    async def _acquire(self, key: Hashable, time_remaining: float | None) -> None:
        entry = self._slots.get(key)
        if entry is None:
            entry = self._slots[key] = _Slots()
        if entry.active < self.limit and not entry.waiters:
            entry.active += 1
            return
        if len(entry.waiters) >= self.max_queued:
            self._forget_if_idle(key, entry)
            logger.warning(
                "concurrency queue full",
                extra=log.fields(kind=self.kind, repository=_describe(key), limit=self.limit),
            )
            raise ResourceExhausted(
                f"too many concurrent {self.kind}s on repository {_describe(key)}: "
                f"{self.limit} running and {self.max_queued} queued (maximum queue size "
                "reached); retry later"
            )
        by_deadline = time_remaining is not None and time_remaining < self.queue_timeout
        wait = max(0.0, time_remaining) if by_deadline and time_remaining is not None else None
        wait = self.queue_timeout if wait is None else wait
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry.waiters.append(waiter)
        started = time.monotonic()
        try:
            async with asyncio.timeout(wait):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                # The slot was handed over just as the wait ended: pass it on.
                self._release(key)
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    entry.waiters.remove(waiter)
                self._forget_if_idle(key, entry)
            if isinstance(exc, TimeoutError):
                waited = time.monotonic() - started
                logger.warning(
                    "concurrency queue timeout",
                    extra=log.fields(
                        kind=self.kind,
                        repository=_describe(key),
                        limit=self.limit,
                        waited_ms=round(waited * 1000),
                    ),
                )
                if by_deadline:
                    raise DeadlineExceeded(
                        f"deadline exceeded while queued behind {self.limit} running "
                        f"{self.kind}s on repository {_describe(key)}"
                    ) from None
                raise ResourceExhausted(
                    f"too many concurrent {self.kind}s on repository {_describe(key)}: "
                    f"waited {waited:.1f}s for one of {self.limit} slots (maximum time in "
                    "concurrency queue reached); retry later"
                ) from None
            raise

    def _release(self, key: Hashable) -> None:
        entry = self._slots.get(key)
        if entry is None:  # pragma: no cover - every release follows an acquire
            return
        while entry.waiters:
            waiter = entry.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot changes hands; active is unchanged
                return
        entry.active -= 1
        self._forget_if_idle(key, entry)

    def _forget_if_idle(self, key: Hashable, entry: _Slots) -> None:
        if entry.active <= 0 and not entry.waiters and self._slots.get(key) is entry:
            del self._slots[key]


def share(total: int, workers: int, index: int) -> int:
    """Worker ``index``'s part of ``total`` split among ``workers``: the shares add up to it.

    The remainder goes to the first workers (10 among 3: 4, 3, 3). A total
    below ``workers`` leaves some workers a share of 0; for a concurrency limit
    that would mean "no limit", which configuration validation refuses.
    """
    base, remainder = divmod(total, workers)
    return base + (1 if index < remainder else 0)


def worker_limits(limits: LimitsConfig, workers: int, index: int) -> LimitsConfig:
    """The limits one of ``workers`` processes of a server enforces on its own.

    Each process counts only its own calls, and the kernel spreads connections
    over the processes, so the configured per-repository limits are divided
    among them: the processes together never run more than the configured number
    of mutators (or expensive reads) on one repository, nor queue more calls.
    0 (no limit) stays 0. The message size is per call and stays as it is.
    """
    if workers <= 1:
        return limits

    def part(total: int) -> int:
        return share(total, workers, index) if total > 0 else 0

    return replace(
        limits,
        mutator_concurrency=part(limits.mutator_concurrency),
        read_concurrency=part(limits.read_concurrency),
        max_queued=part(limits.max_queued),
    )


def _describe(key: Hashable) -> str:
    if isinstance(key, tuple):
        return repr("/".join(str(part) for part in key[1:]) or str(key))
    return repr(str(key))


class DrainGate:
    """Counts calls in flight; once draining, refuses new ones with UNAVAILABLE."""

    def __init__(self, what: str = "server") -> None:
        self.what = what
        self._inflight = 0
        self._draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def draining(self) -> bool:
        return self._draining

    @property
    def inflight(self) -> int:
        return self._inflight

    def enter(self) -> _Entered:
        """``with gate.enter():`` around one call (a plain class: on every call's path)."""
        return _Entered(self)

    def _enter(self) -> None:
        if self._draining:
            # UNAVAILABLE: the call did nothing and may be retried elsewhere.
            raise Unavailable(f"{self.what} is shutting down: retry on another {self.what}")
        self._inflight += 1
        if self._inflight == 1:
            self._idle.clear()

    def _leave(self) -> None:
        self._inflight -= 1
        if self._inflight == 0:
            self._idle.set()

    def drain(self) -> None:
        self._draining = True

    async def wait_idle(self) -> None:
        """Return once no call is in flight (callers bound the wait with a timeout)."""
        await self._idle.wait()


class _Entered:
    """One call counted in flight by its gate, from ``__enter__`` to ``__exit__``."""

    __slots__ = ("_gate",)

    def __init__(self, gate: DrainGate) -> None:
        self._gate = gate

    def __enter__(self) -> None:
        self._gate._enter()

    def __exit__(self, *_exc: object) -> None:
        self._gate._leave()


class Admission:
    """The gate and the two per-repository limiters of one server."""

    def __init__(self, limits: LimitsConfig | None = None, what: str = "server") -> None:
        self.limits = limits or LimitsConfig()
        self.gate = DrainGate(what)
        self.mutators = RepositoryLimiter(
            "mutator",
            self.limits.mutator_concurrency,
            self.limits.max_queued,
            self.limits.queue_timeout,
        )
        self.reads = RepositoryLimiter(
            "expensive read",
            self.limits.read_concurrency,
            self.limits.max_queued,
            self.limits.queue_timeout,
        )

    def limiter(self, method: str, mutator: bool) -> RepositoryLimiter | None:
        """The limiter a method is subject to, if any."""
        if mutator:
            return self.mutators
        if method in EXPENSIVE_READS:
            return self.reads
        return None

    @contextlib.asynccontextmanager
    async def slot(
        self, method: str, mutator: bool, key: Hashable, time_remaining: float | None
    ) -> AsyncIterator[None]:
        limiter = self.limiter(method, mutator)
        if limiter is None:
            yield
            return
        async with limiter.slot(key, time_remaining):
            yield


__all__ = [
    "EXPENSIVE_READS",
    "Admission",
    "DrainGate",
    "RepositoryLimiter",
    "share",
    "worker_limits",
]
