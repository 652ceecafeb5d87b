"""Keeping one lease alive, and knowing *locally* when it can no longer be trusted.

The server expires a lease ``ttl`` seconds after it processed the last
keep-alive, so the lease is certainly alive until ``sent + ttl`` where ``sent``
is when the last acknowledged keep-alive left this process. The keeper renews
every ``ttl / 6`` and declares the lease **lost** once no keep-alive sent in the
last ``ttl * safety`` (default ``ttl / 2``) was acknowledged: with the default
TTL of 5 s that tolerates an etcd hiccup (e.g. a raft leader election) of at
least 1.6 s without giving up the lease. Holders of
lease-bound roles (leader, replication job claims) stop their work on loss,
which therefore happens at least ``ttl / 2`` before the server could expire the
lease and hand the role to someone else. That margin absorbs clock-rate drift
and the time to cancel tasks; fencing (see ``election``) covers what is left,
e.g. a process paused past its deadline.

A lost keeper is final: owners grant a new lease and re-register.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from gitquorum.cluster.clock import REAL_CLOCK, Clock
from gitquorum.cluster.errors import LeaseExpired, StoreUnavailable
from gitquorum.cluster.store import Store

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(
        self,
        store: Store,
        ttl: float,
        *,
        name: str = "",
        clock: Clock | None = None,
        interval: float | None = None,
        safety: float = 0.5,
    ) -> None:
        if ttl <= 0:
            raise ValueError("lease ttl must be positive")
        if not 0 < safety < 1:
            raise ValueError("safety must be in (0, 1)")
        self.store = store
        self.ttl = ttl
        self.name = name
        self.clock: Clock = clock or REAL_CLOCK
        self.interval = interval if interval is not None else ttl / 6
        self.safety = safety
        self.lease_id = 0
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self.last_ack = 0.0
        self._deadline = 0.0
        self._task: asyncio.Task[None] | None = None
        self._callbacks: list[Callable[[], None]] = []

    @property
    def alive(self) -> bool:
        """True while the lease is certainly alive on the server (by local time)."""
        return bool(self.lease_id) and not self.lost.is_set() and self.clock.now() < self._deadline

    @property
    def deadline(self) -> float:
        """Local time after which the lease is considered lost."""
        return self._deadline

    def on_lost(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` (synchronously, once) when the lease is lost."""
        if self.lost.is_set():
            callback()
        else:
            self._callbacks.append(callback)

    async def start(self) -> LeaseKeeper:
        sent = self.clock.now()
        grant = asyncio.ensure_future(self.store.grant(self.ttl))
        try:
            lease = await asyncio.shield(grant)
        except asyncio.CancelledError:
            # etcd may grant it all the same: take the answer and revoke it, so
            # a start cancelled half-way (a server closing) leaves no lease behind.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.ttl):
                    await self.store.revoke((await grant).id)
            raise
        self.lease_id = lease.id
        self.ttl = lease.ttl
        self.last_ack = sent
        self._deadline = sent + self.ttl * self.safety
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"lease-keeper-{self.name}-{self.lease_id:x}"
        )
        return self

    def _mark_lost(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        log.warning("lease %x (%s) lost: %s", self.lease_id, self.name, reason)
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("lease-loss callback failed")

    async def _run(self) -> None:
        next_send = self.last_ack + self.interval
        while not self.lost.is_set():
            now = self.clock.now()
            if now >= self._deadline:
                self._mark_lost(f"no keep-alive acknowledged for {now - self.last_ack:.2f}s")
                return
            if now < next_send:
                await self.clock.sleep(min(next_send, self._deadline) - now)
                continue
            sent = self.clock.now()
            try:
                # Bound the attempt by the deadline so a hung member cannot
                # delay the loss decision past it. (asyncio.timeout, not
                # wait_for: on 3.11 wait_for can swallow a cancellation.)
                async with asyncio.timeout(max(0.01, self._deadline - sent)):
                    ttl = await self.store.keep_alive(self.lease_id)
            except LeaseExpired as exc:
                self._mark_lost(f"lease expired: {exc}")
                return
            except (StoreUnavailable, TimeoutError) as exc:
                log.info("keep-alive of lease %x failed: %s", self.lease_id, exc)
                # Retry sooner than the normal interval: a failure eats margin.
                next_send = self.clock.now() + min(self.interval, self.ttl / 10)
                continue
            if self.lost.is_set():
                return
            self.last_ack = sent
            self._deadline = sent + min(ttl, self.ttl) * self.safety
            next_send = sent + self.interval

    async def close(self, *, revoke: bool = True) -> None:
        """Stop renewing; with ``revoke`` also delete the lease and its keys now."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        was_lost = self.lost.is_set()
        self._mark_lost("closed")
        if revoke and self.lease_id and not was_lost:
            with contextlib.suppress(StoreUnavailable, TimeoutError):
                async with asyncio.timeout(self.ttl):
                    await self.store.revoke(self.lease_id)
