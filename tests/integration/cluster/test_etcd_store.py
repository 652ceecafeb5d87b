from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import pytest

from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.lease import LeaseKeeper
from gitquorum.cluster.store import EventType, WatchEvent
from tests.harness.etcd import EtcdCluster
from tests.integration.cluster.conftest import StoreFactory
from tests.integration.cluster.polling import eventually
from tests.unit.cluster.store_contract import CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
async def test_etcd_store_contract(check, etcd1: EtcdCluster, make_store: StoreFactory) -> None:  # type: ignore[no-untyped-def]
    await check(make_store(etcd1), f"/contract/{uuid.uuid4().hex}/")


async def test_lease_expiry_removes_keys_and_is_watched(
    etcd1: EtcdCluster, make_store: StoreFactory, keys: Keyspace
) -> None:
    store = make_store(etcd1)
    lease = await store.grant(1)
    start = await store.put(f"{keys.prefix}owned", b"x", lease=lease.id)
    began = time.monotonic()
    async with asyncio.timeout(10):
        async for batch in store.watch(keys.prefix, prefix=True, start_revision=start + 1):
            if batch.events:
                assert batch.events[0].type is EventType.DELETE
                break
    assert 0.5 < time.monotonic() - began < 5
    assert await store.get(f"{keys.prefix}owned") is None


class Recorder:
    def __init__(self) -> None:
        self.events: list[WatchEvent] = []

    async def follow(self, store, prefix: str, start: int) -> None:  # type: ignore[no-untyped-def]
        async for batch in store.watch(prefix, prefix=True, start_revision=start):
            assert not batch.compacted
            self.events.extend(batch.events)


async def test_watch_resumes_across_a_restart_of_the_only_member(
    tmp_path,
    make_store: StoreFactory,
    keys: Keyspace,  # type: ignore[no-untyped-def]
) -> None:
    with EtcdCluster(1, tmp_path / "etcd") as cluster:
        store = make_store(cluster, watch_progress_interval=0.5, watch_idle_timeout=2.0)
        writer = make_store(cluster)
        first = await writer.put(f"{keys.prefix}0", b"0")
        recorder = Recorder()
        task = asyncio.ensure_future(recorder.follow(store, keys.prefix, first))
        await eventually(lambda: len(recorder.events) == 1, 10, "first event")
        cluster.kill(0)
        cluster.restart(0)
        for i in range(1, 20):
            await writer.put(f"{keys.prefix}{i}", str(i).encode())
        await eventually(lambda: len(recorder.events) >= 20, 15, "events after restart")
        task.cancel()
        assert [e.kv.value for e in recorder.events] == [str(i).encode() for i in range(20)]


async def test_three_members_keep_working_when_one_is_killed(
    etcd3: EtcdCluster, make_store: StoreFactory, keys: Keyspace
) -> None:
    store = make_store(etcd3)
    watcher_store = make_store(etcd3)
    keeper = await LeaseKeeper(store, 5, name="test").start()
    start = await store.put(f"{keys.prefix}start", b"")
    recorder = Recorder()
    task = asyncio.ensure_future(recorder.follow(watcher_store, f"{keys.prefix}w/", start))
    written: list[bytes] = []
    victim = etcd3.leader_index()
    assert victim is not None
    for i in range(150):
        if i == 50:
            etcd3.kill(victim)  # the raft leader: the hardest member to lose
        deadline = time.monotonic() + 10
        while True:  # a put in flight when the member died may fail once
            try:
                await store.put(f"{keys.prefix}w/{i:04d}", str(i).encode(), lease=keeper.lease_id)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
        written.append(str(i).encode())
        await asyncio.sleep(0.005)
    await eventually(lambda: len(recorder.events) >= 150, 15, "all watch events")
    assert keeper.alive, keeper.lost_reason
    assert await store.time_to_live(keeper.lease_id) > 0
    # Exactly once and in order; a put repeated after an ambiguous failure
    # shows up as a second event with the same value, so compare distinct keys.
    keys_seen = [e.kv.key for e in recorder.events]
    assert sorted(set(keys_seen)) == [f"{keys.prefix}w/{i:04d}" for i in range(150)]
    revisions = [e.kv.mod_revision for e in recorder.events]
    assert revisions == sorted(set(revisions))
    etcd3.restart(victim)
    assert len((await store.range(f"{keys.prefix}w/", prefix=True)).kvs) == 150
    task.cancel()
    await keeper.close()
    assert (await store.range(f"{keys.prefix}w/", prefix=True)).kvs == ()


async def test_watches_whose_member_is_paused_move_to_other_members(
    etcd3: EtcdCluster, make_store: StoreFactory, keys: Keyspace
) -> None:
    """A silent stream is replaced on another member, so every watch hears from
    etcd again well within ``stale_read_limit`` (5 s by default) while one
    member of three is paused. A proxy has several watches (repositories,
    proxies, jobs, ...): on the balanced channel the streams the paused member
    held were re-opened together and spread over every member, the paused one
    included, and a proxy heard nothing from etcd for more than 5 s and refused
    reads as stale (docs/reliability.md, finding 3)."""
    store = make_store(etcd3)
    writer = make_store(etcd3)
    start = await writer.put(f"{keys.prefix}before", b"")
    watches = 12
    heard: list[list[float]] = [[] for _ in range(watches)]
    events: list[list[WatchEvent]] = [[] for _ in range(watches)]

    async def follow(index: int) -> None:
        async for batch in store.watch(keys.prefix, prefix=True, start_revision=start):
            heard[index].append(time.monotonic())
            events[index].extend(batch.events)

    tasks = [asyncio.ensure_future(follow(i)) for i in range(watches)]
    try:
        await eventually(lambda: all(len(e) == 1 for e in events), 10, "the first event")
        paused_at = time.monotonic()
        etcd3.pause(0)
        try:
            await writer.put(f"{keys.prefix}during", b"")
            await eventually(
                lambda: time.monotonic() > paused_at + 9, 15, "nine seconds of the pause"
            )
        finally:
            etcd3.resume(0)
        for index in range(watches):
            window = [paused_at, *(t for t in heard[index] if t > paused_at)]
            gaps = [later - earlier for earlier, later in itertools.pairwise(window)]
            # Silence for the idle timeout (3 s), then progress from another
            # member every second; 4.5 s leaves the limit half a second.
            assert max(gaps) < 4.5, (index, gaps)
            assert [e.kv.key for e in events[index]] == [
                f"{keys.prefix}before",
                f"{keys.prefix}during",
            ]
    finally:
        for task in tasks:
            task.cancel()
