from __future__ import annotations

import asyncio

import pytest

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.election import LeaderElection, fenced_txn
from gitquorum.cluster.errors import LeadershipLost, NotLeader
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.store import Op

KEYS = Keyspace("unit")


async def settle(clock: ManualClock, seconds: float = 0.2) -> None:
    await clock.run_for(seconds, step=0.05)


async def until(clock: ManualClock, predicate, limit: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    """Advance the manual clock until predicate() holds (bounded)."""
    waited = 0.0
    while not predicate():
        if waited > limit:
            raise AssertionError("condition not reached")
        await clock.run_for(0.05)
        waited += 0.05


def leaders(elections: list[LeaderElection]) -> list[str]:
    return [e.proxy for e in elections if e.is_leader]


async def test_one_leader_and_fencing_token_is_the_key_create_revision() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    elections = [LeaderElection(store, KEYS, f"p{i}", ttl=4, clock=clock) for i in range(3)]
    for e in elections:
        await e.start()
    await until(clock, lambda: len(leaders(elections)) == 1)
    await settle(clock, 5)
    assert len(leaders(elections)) == 1
    leader = next(e for e in elections if e.is_leader)
    kv = await store.get(KEYS.leader())
    assert kv is not None and kv.create_revision == leader.token.create_revision
    assert kv.lease == leader.token.lease_id
    assert await leader.current_leader() == leader.proxy
    for e in elections:
        if e is not leader:
            with pytest.raises(NotLeader):
                e.token  # noqa: B018
    for e in elections:
        await e.close()


async def test_leader_steps_down_before_its_lease_can_expire() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    election = LeaderElection(store, KEYS, "p0", ttl=4, clock=clock)
    steps: list[tuple[bool, float]] = []
    election.add_listener(lambda leading, _t: steps.append((leading, clock.now())))
    cancelled = asyncio.Event()

    async def leader_work() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    election.run_while_leader("work", leader_work)
    await election.start()
    await until(clock, lambda: election.is_leader)
    lease = election.token.lease_id
    await settle(clock, 3)
    store.set_available(False)  # keep-alives fail from now on
    unavailable_at = clock.now()
    await until(clock, lambda: not election.is_leader)
    stepped_down_at = clock.now()
    await asyncio.sleep(0)
    assert cancelled.is_set() and not election.leading.is_set()
    assert steps[-1][0] is False
    # The server would expire the lease no earlier than the last successful
    # keep-alive + ttl; the step-down happens ttl/2 earlier at the latest.
    assert stepped_down_at <= unavailable_at + 2.0 + 0.1
    store.set_available(True)
    assert await store.time_to_live(lease) > 0
    await election.close()


async def test_stale_leader_cannot_write_and_new_leader_can() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    a = LeaderElection(store, KEYS, "a", ttl=4, clock=clock)
    await a.start()
    await until(clock, lambda: a.is_leader)
    stale = a.token
    # "Pause" a: its lease disappears while it is not looking.
    await store.revoke(stale.lease_id)
    b = LeaderElection(store, KEYS, "b", ttl=4, clock=clock)
    await b.start()
    await until(clock, lambda: b.is_leader)
    with pytest.raises(LeadershipLost):
        await fenced_txn(store, stale, [], [Op.put("/unit/data", b"from a")])
    assert await store.get("/unit/data") is None
    result = await b.leader_txn([], [Op.put("/unit/data", b"from b")])
    assert result.succeeded
    await until(clock, lambda: not a.is_leader)
    await a.close()
    await b.close()


async def test_lost_acquisition_answer_is_adopted() -> None:
    clock = ManualClock()
    # The acquire txn (the first write) is applied but its answer is lost.
    store2 = MemoryStore(clock)
    e2 = LeaderElection(store2, KEYS, "q", ttl=4, clock=clock, retry_delay=0.1)
    store2.fail_after_apply(1)
    await e2.start()
    await until(clock, lambda: e2.is_leader)
    kv = await store2.get(KEYS.leader())
    assert kv is not None and kv.create_revision == e2.token.create_revision
    await e2.close()


async def test_resign_hands_over_and_close_releases() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    a = LeaderElection(store, KEYS, "a", ttl=4, clock=clock)
    b = LeaderElection(store, KEYS, "b", ttl=4, clock=clock)
    await a.start()
    await until(clock, lambda: a.is_leader)
    await b.start()
    await settle(clock, 1)
    assert leaders([a, b]) == ["a"]
    seen_both = False

    async def watch_overlap() -> None:
        nonlocal seen_both
        while True:
            seen_both = seen_both or (a.is_leader and b.is_leader)
            await asyncio.sleep(0)

    watcher = asyncio.ensure_future(watch_overlap())
    resign = asyncio.ensure_future(a.resign())
    await until(clock, lambda: b.is_leader)
    await resign
    await b.close()
    await until(clock, lambda: a.is_leader)
    watcher.cancel()
    assert not seen_both
    await a.close()
    assert await store.get(KEYS.leader()) is None
