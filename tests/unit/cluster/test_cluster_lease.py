from __future__ import annotations

import asyncio

import pytest

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.lease import LeaseKeeper
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.store import Lease


async def test_keeper_renews_while_store_answers() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    keeper = await LeaseKeeper(store, 4.0, clock=clock).start()
    await clock.run_for(20)
    assert keeper.alive
    assert await store.time_to_live(keeper.lease_id) > 2
    await keeper.close()
    assert await store.time_to_live(keeper.lease_id) == -1


async def test_keeper_declares_loss_at_half_ttl_before_the_server_expires_it() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    keeper = await LeaseKeeper(store, 4.0, clock=clock).start()
    lost_at: list[float] = []
    keeper.on_lost(lambda: lost_at.append(clock.now()))
    await clock.run_for(1.2)
    last_ack = keeper.last_ack
    assert last_ack > 1000.5  # renewed at least once
    store.set_available(False)
    await clock.run_for(last_ack + 1.9 - clock.now())
    assert keeper.alive
    await clock.run_for(0.2)
    assert not keeper.alive and keeper.lost.is_set()
    # Lost at last_ack + ttl/2, while the server keeps the lease until last_ack + ttl.
    assert lost_at and lost_at[0] <= last_ack + 2.0 + 0.06
    store.set_available(True)
    assert await store.time_to_live(keeper.lease_id) > 0
    await keeper.close()


async def test_keeper_notices_an_expired_lease() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    keeper = await LeaseKeeper(store, 4.0, clock=clock).start()
    await store.revoke(keeper.lease_id)
    await clock.run_for(1.5)
    assert keeper.lost.is_set()
    assert "expired" in keeper.lost_reason


async def test_alive_is_false_past_deadline_even_if_the_loop_did_not_run() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    keeper = await LeaseKeeper(store, 4.0, clock=clock).start()
    clock.advance(2.5)  # no chance for the keeper task to run
    assert not keeper.alive
    await keeper.close()


class _LateGrant(MemoryStore):
    """Grants a lease only when told to: etcd answering after the caller gave up."""

    def __init__(self) -> None:
        super().__init__()
        self.asked = asyncio.Event()
        self.answer = asyncio.Event()
        self.granted: list[int] = []

    async def grant(self, ttl: float) -> Lease:
        self.asked.set()
        await self.answer.wait()
        lease = await super().grant(ttl)
        self.granted.append(lease.id)
        return lease


async def test_a_start_cancelled_during_the_grant_revokes_the_lease() -> None:
    store = _LateGrant()
    keeper = LeaseKeeper(store, 4.0)
    starting = asyncio.create_task(keeper.start())
    async with asyncio.timeout(5):
        await store.asked.wait()
    starting.cancel()
    await asyncio.sleep(0)  # the cancellation reaches start() before etcd answers
    store.answer.set()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(5):
            await starting
    assert len(store.granted) == 1
    assert await store.time_to_live(store.granted[0]) == -1, "the granted lease outlived start()"
    assert keeper.lease_id == 0
