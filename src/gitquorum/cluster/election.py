"""Leader election among proxies, with a fencing token on every leader-only write.

Acquire: a txn that creates the leader key *if absent*, attached to the
candidate's lease (default TTL 5 s). The winner's **fencing token** is the leader
key's ``create_revision`` (unique for every acquisition, since a re-created key
gets a new one) together with its lease id. Every leader-only write goes
through :func:`fenced_txn`, which adds ``leader key create_revision == token``
to the *same* txn: a write from a leader that lost the key, however late it
arrives (a paused process, a slow network), is rejected by etcd itself.

Stepping down. The lease keeper (``lease.LeaseKeeper``) renews every TTL/6 and
declares the lease lost when no keep-alive sent in the last TTL/2 was
acknowledged. On loss the election steps down synchronously: ``is_leader``
turns false, listeners run and tasks started with :meth:`LeaderElection.run_while_leader`
are cancelled. This happens at least TTL/2 before etcd can expire the lease and
let another proxy win; ``is_leader`` also checks the keeper's deadline against
the clock, so a process resumed after a pause does not believe it still leads
even before its keeper task has run. Fencing covers the remaining window.

Ambiguous acquisition (the txn's answer lost): the next round reads the leader
key and adopts it if it carries this candidate's own lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

from tenacity import wait_fixed

from gitquorum.cluster.clock import REAL_CLOCK, Clock
from gitquorum.cluster.errors import LeadershipLost, LeaseExpired, NotLeader, StoreUnavailable
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.lease import LeaseKeeper
from gitquorum.cluster.store import Compare, EventType, KeyValue, Op, Store, TxnResult
from gitquorum.cluster.store_retry import StoreRetry, report, store_failure

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FencingToken:
    """Proof of leadership: the leader key's create_revision (and the lease it sits on)."""

    key: str
    create_revision: int
    lease_id: int
    holder: str

    def compare(self) -> Compare:
        return Compare.create_revision(self.key, self.create_revision)


async def fenced_txn(
    store: Store,
    token: FencingToken,
    compares: Sequence[Compare],
    success: Sequence[Op],
    failure: Sequence[Op] = (),
) -> TxnResult:
    """A txn that only applies while ``token`` still names the current leader.

    Raises :class:`LeadershipLost` when the fence failed. Otherwise returns the
    result: ``succeeded`` False means the caller's own compares failed (its
    ``failure`` responses come first, in order).
    """
    result = await store.txn([token.compare(), *compares], success, [*failure, Op.get(token.key)])
    if not result.succeeded:
        holder = result.range(len(failure))
        current = holder.kvs[0] if holder.kvs else None
        if current is None or current.create_revision != token.create_revision:
            raise LeadershipLost(
                f"fencing token {token.create_revision} of {token.holder} is stale"
            )
    return result


def _holder(kv: KeyValue) -> tuple[str, int]:
    try:
        data = json.loads(kv.value)
        return str(data["proxy"]), int(data["lease"])
    except (ValueError, KeyError, TypeError):
        return "?", kv.lease


LeaderListener = Callable[[bool, "FencingToken | None"], None]
TaskFactory = Callable[[], Coroutine[Any, Any, None]]


class LeaderElection:
    def __init__(
        self,
        store: Store,
        keys: Keyspace,
        proxy: str,
        *,
        ttl: float = 5.0,
        election: str = "leader",
        clock: Clock | None = None,
        retry_delay: float = 0.5,
        resign_backoff: float | None = None,
    ) -> None:
        self.store = store
        self.proxy = proxy
        self.key = keys.leader(election)
        self.ttl = ttl
        self.clock: Clock = clock or REAL_CLOCK
        self.retry_delay = retry_delay
        # After resigning, stay out long enough for the others to see the vacancy.
        self.resign_backoff = resign_backoff if resign_backoff is not None else ttl / 2
        self._token: FencingToken | None = None
        self._keeper: LeaseKeeper | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._resign = asyncio.Event()
        self._listeners: list[LeaderListener] = []
        self._factories: list[tuple[str, TaskFactory]] = []
        self._leader_tasks: list[asyncio.Task[None]] = []
        self.changed = asyncio.Condition()
        # Set while this proxy leads; cleared at the moment it steps down.
        self.leading = asyncio.Event()
        self.terms = 0

    # -- state --------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._token is not None and self._keeper is not None and self._keeper.alive

    @property
    def token(self) -> FencingToken:
        """The current fencing token; raises NotLeader when not leading."""
        token = self._token
        if token is None or not self.is_leader:
            raise NotLeader(f"{self.proxy} is not the leader")
        return token

    def add_listener(self, callback: LeaderListener) -> None:
        """``callback(leading, token)`` on every gain and loss of leadership."""
        self._listeners.append(callback)

    def run_while_leader(self, name: str, factory: TaskFactory) -> None:
        """Run ``factory()`` as a task during every term; it is cancelled on step-down."""
        self._factories.append((name, factory))
        if self._token is not None:
            self._leader_tasks.append(asyncio.get_running_loop().create_task(factory(), name=name))

    async def wait_until(self, leading: bool = True) -> None:
        """Wait for leadership (or its absence); bound it with ``asyncio.timeout``."""
        async with self.changed:
            await self.changed.wait_for(lambda: self.is_leader == leading)

    async def current_leader(self) -> str | None:
        kv = await self.store.get(self.key)
        return _holder(kv)[0] if kv is not None else None

    async def leader_txn(
        self, compares: Sequence[Compare], success: Sequence[Op], failure: Sequence[Op] = ()
    ) -> TxnResult:
        """A leader-only write, fenced with the current token."""
        try:
            return await fenced_txn(self.store, self.token, compares, success, failure)
        except LeadershipLost:
            self._step_down("fencing token rejected")
            raise

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._campaign(), name=f"election:{self.proxy}"
        )

    async def resign(self) -> None:
        """Give up leadership now (others may take it); keep campaigning afterwards."""
        if not self.is_leader:
            return
        self._resign.set()
        async with self.changed:
            await self.changed.wait_for(lambda: not self.is_leader)

    async def close(self) -> None:
        """Stop campaigning, step down and release the leader key and lease."""
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        token = self._token
        self._step_down("closing")
        keeper, self._keeper = self._keeper, None
        if token is not None:
            with contextlib.suppress(StoreUnavailable, LeadershipLost):
                await fenced_txn(self.store, token, [], [Op.delete(self.key)])
        if keeper is not None:
            await keeper.close(revoke=True)
        await asyncio.gather(*self._leader_tasks, return_exceptions=True)

    # -- internals ------------------------------------------------------------------

    def _notify(self) -> None:
        async def wake() -> None:
            async with self.changed:
                self.changed.notify_all()

        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(wake())

    def _become_leader(self, token: FencingToken) -> None:
        self._token = token
        self.terms += 1
        self.leading.set()
        log.info(
            "%s is leader (token %d, lease %x)", self.proxy, token.create_revision, token.lease_id
        )
        self._leader_tasks = [
            asyncio.get_running_loop().create_task(factory(), name=name)
            for name, factory in self._factories
        ]
        for callback in list(self._listeners):
            callback(True, token)
        self._notify()

    def _step_down(self, reason: str) -> None:
        if self._token is None:
            return
        log.warning("%s steps down: %s", self.proxy, reason)
        self._token = None
        self.leading.clear()
        for task in self._leader_tasks:
            task.cancel()
        for callback in list(self._listeners):
            callback(False, None)
        self._notify()

    async def _new_keeper(self) -> LeaseKeeper:
        async def start() -> LeaseKeeper:
            keeper = LeaseKeeper(
                self.store, self.ttl, name=f"election:{self.proxy}", clock=self.clock
            )
            await keeper.start()
            keeper.on_lost(lambda: self._step_down("lease lost"))
            return keeper

        # No leader can be elected without a lease: keep trying until etcd answers.
        until_granted = StoreRetry(
            retry_on=store_failure,
            wait=wait_fixed(self.retry_delay),
            sleep=self.clock.sleep,
            before_retry=report(
                lambda exc: log.info("%s cannot get an election lease: %s", self.proxy, exc)
            ),
        )
        return await until_granted(start)

    async def _campaign(self) -> None:
        while not self._stop.is_set():
            keeper = self._keeper = await self._new_keeper()
            while keeper.alive and not self._stop.is_set():
                try:
                    token, holder = await self._try_acquire(keeper)
                except LeaseExpired:
                    break
                except StoreUnavailable as exc:
                    log.info("%s campaign round failed: %s", self.proxy, exc)
                    await self.clock.sleep(self.retry_delay)
                    continue
                if token is not None:
                    self._become_leader(token)
                    await self._hold(token, keeper)
                    if self._resign.is_set():
                        await self._give_up(token)
                    self._step_down("term ended")
                    continue
                assert holder is not None
                await self._wait_vacancy(holder, keeper)
            await keeper.close(revoke=not self._stop.is_set())

    async def _try_acquire(
        self, keeper: LeaseKeeper
    ) -> tuple[FencingToken | None, KeyValue | None]:
        value = json.dumps({"proxy": self.proxy, "lease": keeper.lease_id}).encode()
        result = await self.store.txn(
            [Compare.absent(self.key)],
            [Op.put(self.key, value, lease=keeper.lease_id)],
            [Op.get(self.key)],
        )
        if result.succeeded:
            return FencingToken(self.key, result.revision, keeper.lease_id, self.proxy), None
        kvs = result.range(0).kvs
        if not kvs:
            return None, KeyValue(self.key, b"", 0, result.revision, 0)  # deleted meanwhile
        current = kvs[0]
        if current.lease == keeper.lease_id:
            # An earlier attempt went through although its answer was lost.
            return FencingToken(
                self.key, current.create_revision, keeper.lease_id, self.proxy
            ), None
        return None, current

    async def _first(self, *aws: Coroutine[Any, Any, Any]) -> None:
        tasks = [asyncio.ensure_future(aw) for aw in aws]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch_key(self, after: int, done: Callable[[KeyValue, EventType], bool]) -> None:
        """Return once an event on the leader key after ``after`` satisfies ``done``."""
        while True:
            try:
                async for batch in self.store.watch(self.key, start_revision=after + 1):
                    if batch.compacted:
                        return  # re-read to find out
                    for event in batch.events:
                        if done(event.kv, event.type):
                            return
                        after = event.kv.mod_revision
                return
            except StoreUnavailable:
                await self.clock.sleep(self.retry_delay)

    async def _hold(self, token: FencingToken, keeper: LeaseKeeper) -> None:
        def changed(kv: KeyValue, kind: EventType) -> bool:
            return kind is EventType.DELETE or kv.create_revision != token.create_revision

        await self._first(
            keeper.lost.wait(),
            self._stop.wait(),
            self._resign.wait(),
            self._watch_key(token.create_revision, changed),
        )

    async def _give_up(self, token: FencingToken) -> None:
        self._resign.clear()
        self._step_down("resigned")
        with contextlib.suppress(StoreUnavailable, LeadershipLost):
            await fenced_txn(self.store, token, [], [Op.delete(self.key)])
        await self.clock.sleep(self.resign_backoff)

    async def _wait_vacancy(self, holder: KeyValue, keeper: LeaseKeeper) -> None:
        if holder.create_revision == 0:
            return  # vacant already
        name, _ = _holder(holder)
        log.debug("%s follows leader %s", self.proxy, name)
        await self._first(
            keeper.lost.wait(),
            self._stop.wait(),
            self._watch_key(holder.mod_revision, lambda _kv, kind: kind is EventType.DELETE),
            # A periodic re-check guards against a watch that silently stalls.
            self.clock.sleep(self.ttl * 2),
        )
