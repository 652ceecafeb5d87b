from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from hypothesis import given
from hypothesis import strategies as st

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.health import (
    Consensus,
    GrpcHealthProbe,
    HealthChecker,
    HealthSnapshot,
    consensus,
    votes_needed,
)
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.membership import HealthView, ProxyMembership
from gitquorum.cluster.memory_store import MemoryStore

KEYS = Keyspace("unit")


def view(**nodes: bool) -> dict[str, dict[str, bool]]:
    return {"vs": dict(nodes)}


def test_half_of_live_proxies() -> None:
    snapshot = HealthSnapshot(
        frozenset({"a", "b", "c"}),
        {
            "a": view(n1=True, n2=True, n3=False),
            "b": view(n1=True, n2=False, n3=False),
            "c": view(n1=False, n2=True, n3=True),
            "gone": view(n3=True),  # not live: ignored
        },
    )
    assert consensus(snapshot).healthy("vs") == {"n1", "n2"}
    # Two live proxies: one of them is enough (half, not a strict majority).
    two = HealthSnapshot(frozenset({"a", "b"}), snapshot.views)
    assert consensus(two).healthy("vs") == {"n1", "n2"}
    # A live proxy that has not published counts as seeing nothing healthy.
    assert consensus(HealthSnapshot(frozenset({"x", "y"}), snapshot.views)).healthy("vs") == set()
    assert consensus(HealthSnapshot(frozenset({"a", "x"}), snapshot.views)).healthy("vs") == {
        "n1",
        "n2",
    }
    assert consensus(HealthSnapshot(frozenset(), {})) == Consensus({}, frozenset())


@pytest.mark.parametrize(
    ("live", "needed"), [(0, 1), (1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3), (7, 4)]
)
def test_votes_needed_is_half_rounded_up(live: int, needed: int) -> None:
    assert votes_needed(live) == needed


# (live proxies, how many of them see n1 healthy, healthy by consensus)
SEEN_BY = [
    (1, 0, False),
    (1, 1, True),
    (2, 0, False),
    # One proxy's blind spot: the other proxy alone keeps the node healthy.
    (2, 1, True),
    (2, 2, True),
    (3, 0, False),
    (3, 1, False),
    (3, 2, True),
    (3, 3, True),
    (4, 1, False),
    (4, 2, True),
    (4, 3, True),
    (5, 1, False),
    (5, 2, False),
    (5, 3, True),
    (5, 5, True),
]


@pytest.mark.parametrize(("live", "seeing", "healthy"), SEEN_BY)
def test_healthy_when_seen_by_at_least_half(live: int, seeing: int, healthy: bool) -> None:
    proxies = [f"p{i}" for i in range(live)]
    views = {p: view(n1=i < seeing, n2=True) for i, p in enumerate(proxies)}
    result = consensus(HealthSnapshot(frozenset(proxies), views))
    assert result.is_healthy("vs", "n1") is healthy
    assert result.healthy("vs") == ({"n1", "n2"} if healthy else {"n2"})


@pytest.mark.parametrize(("live", "seeing", "healthy"), SEEN_BY)
def test_live_proxies_without_a_view_see_nothing(live: int, seeing: int, healthy: bool) -> None:
    # The proxies that do not see n1 have published nothing at all.
    proxies = [f"p{i}" for i in range(live)]
    views = {p: view(n1=True) for p in proxies[:seeing]}
    assert consensus(HealthSnapshot(frozenset(proxies), views)).is_healthy("vs", "n1") is healthy


@pytest.mark.parametrize(("live", "seeing", "healthy"), SEEN_BY)
def test_views_of_proxies_not_live_are_ignored(live: int, seeing: int, healthy: bool) -> None:
    # Three departed proxies still have views that see n1: they change nothing.
    proxies = [f"p{i}" for i in range(live)]
    views = {p: view(n1=i < seeing) for i, p in enumerate(proxies)}
    views.update({f"gone{i}": view(n1=True) for i in range(3)})
    assert consensus(HealthSnapshot(frozenset(proxies), views)).is_healthy("vs", "n1") is healthy


PROXIES = st.sets(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=5)
VIEWS = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d", "e", "z"]),
    st.dictionaries(st.sampled_from(["n1", "n2", "n3"]), st.booleans()),
)


@given(live=PROXIES, views=VIEWS)
def test_consensus_matches_its_definition(
    live: set[str], views: dict[str, dict[str, bool]]
) -> None:
    result = consensus(HealthSnapshot(frozenset(live), {p: {"vs": v} for p, v in views.items()}))
    for node in ("n1", "n2", "n3"):
        votes = sum(1 for p in live if views.get(p, {}).get(node, False))
        assert (node in result.healthy("vs")) == (votes >= 1 and votes * 2 >= len(live))


@given(
    live=PROXIES,
    views=VIEWS,
    voter=st.sampled_from(["a", "b", "c", "d", "e"]),
    node=st.sampled_from(["n1", "n2", "n3"]),
)
def test_one_more_healthy_vote_never_makes_a_node_unhealthy(
    live: set[str], views: dict[str, dict[str, bool]], voter: str, node: str
) -> None:
    before = consensus(HealthSnapshot(frozenset(live), {p: {"vs": v} for p, v in views.items()}))
    more = {p: dict(v) for p, v in views.items()}
    more.setdefault(voter, {})[node] = True
    after = consensus(HealthSnapshot(frozenset(live), {p: {"vs": v} for p, v in more.items()}))
    assert before.healthy("vs") <= after.healthy("vs")


async def test_checker_hysteresis_and_publish_on_change_only() -> None:
    state = {"a1": True, "a2": True}
    published: list[dict[str, dict[str, bool]]] = []

    async def probe(address: str) -> bool:
        return state[address]

    async def publish(v) -> None:  # type: ignore[no-untyped-def]
        published.append(v)

    checker = HealthChecker(
        {"vs": {"n1": "a1", "n2": "a2"}}, publish=publish, probe=probe, unhealthy_after=2
    )
    await checker.check_once()
    await checker.check_once()
    assert published == [{"vs": {"n1": True, "n2": True}}]
    state["a2"] = False
    await checker.check_once()  # one failure is tolerated
    assert checker.is_healthy("vs", "n2") and len(published) == 1
    await checker.check_once()
    assert not checker.is_healthy("vs", "n2")
    assert published[-1] == {"vs": {"n1": True, "n2": False}}
    state["a2"] = True
    await checker.check_once()  # one success is enough
    assert published[-1] == {"vs": {"n1": True, "n2": True}} and len(published) == 3


async def test_checker_retries_a_failed_publish() -> None:
    calls = 0

    async def publish(_v) -> None:  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("etcd down")

    async def probe(_address: str) -> bool:
        return True

    checker = HealthChecker({"vs": {"n1": "x"}}, publish=publish, probe=probe)
    await checker.check_once()
    await checker.check_once()
    await checker.check_once()
    assert calls == 2


async def test_grpc_health_probe_against_a_real_server() -> None:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    probe = GrpcHealthProbe(timeout=1.0)
    try:
        await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        assert await probe(f"tcp://127.0.0.1:{port}")
        await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        assert not await probe(f"127.0.0.1:{port}")
    finally:
        await server.stop(None)
    assert not await probe(f"127.0.0.1:{port}")
    await probe.close()


async def test_views_and_membership_drive_the_consensus() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    observer = HealthView(store, KEYS, clock=clock)
    await observer.start()
    changes: list[tuple[Consensus, Consensus]] = []
    observer.add_listener(lambda old, new: changes.append((old, new)))
    members = [ProxyMembership(store, KEYS, f"p{i}", ttl=4, clock=clock) for i in range(3)]
    await members[0].start(view(n1=True, n2=True))
    await members[1].start(view(n1=True, n2=False))
    await members[2].start(view(n1=False, n2=True))
    async with asyncio.timeout(5):
        result = await observer.wait_for(lambda c: len(c.proxies) == 3)
    assert result.healthy("vs") == {"n1", "n2"}
    assert set(observer.proxies()) == {"p0", "p1", "p2"}
    # p2 changes its mind about n1: still healthy by 2 of 3.
    await members[2].publish_health(view(n1=True, n2=False))
    async with asyncio.timeout(5):
        await observer.wait_for(lambda c: c.healthy("vs") == {"n1"})
    # p0 dies (its keep-alives stop): after its lease expires two proxies remain
    # and one of them (p2) is enough for n1.
    await members[1].publish_health(view(n1=False, n2=False))
    async with asyncio.timeout(5):
        await observer.wait_for(lambda c: c.healthy("vs") == {"n1"})
    assert members[0].keeper is not None
    task = members[0]._task
    assert task is not None
    task.cancel()
    keeper = members[0].keeper
    assert keeper is not None and keeper._task is not None
    keeper._task.cancel()
    for _ in range(100):
        await members[1].keeper.store.keep_alive(members[1].keeper.lease_id)  # type: ignore[union-attr]
        await members[2].keeper.store.keep_alive(members[2].keeper.lease_id)  # type: ignore[union-attr]
        clock.advance(0.1)
        await asyncio.sleep(0)
        if "p0" not in observer.proxies():
            break
    async with asyncio.timeout(5):
        final = await observer.wait_for(lambda c: c.proxies == {"p1", "p2"})
    assert final.healthy("vs") == {"n1"}
    assert changes and observer.changed.is_set()
    for member in members[1:]:
        await member.close()
    await observer.close()


async def test_membership_re_registers_after_losing_its_lease() -> None:
    clock = ManualClock()
    store = MemoryStore(clock)
    member = ProxyMembership(store, KEYS, "p", ttl=4, clock=clock, retry_delay=0.1)
    await member.start(view(n1=True))
    first = member.keeper
    assert first is not None
    await store.revoke(first.lease_id)
    assert await store.get(KEYS.proxy("p")) is None
    for _ in range(60):
        await clock.run_for(0.1)
        if member.registrations == 2 and await store.get(KEYS.proxy("p")) is not None:
            break
    assert member.registrations == 2
    await member.publish_health(view(n1=False))
    kv = await store.get(KEYS.proxy("p"))
    assert kv is not None and b'"n1":false' in kv.value
    await member.close()
    assert await store.get(KEYS.proxy("p")) is None


async def test_the_consensus_outlives_every_membership_key_vanishing_at_once() -> None:
    # Every proxy's lease lost at once (their keep-alives all went to a paused
    # etcd member): the consensus must not turn into "no live proxy, no
    # healthy node" while they register again — nor into one proxy's view.
    clock = ManualClock()
    store = MemoryStore(clock)
    observer = HealthView(store, KEYS, clock=clock, empty_hold=10.0)
    await observer.start()
    members = [ProxyMembership(store, KEYS, f"p{i}", ttl=4, clock=clock) for i in range(2)]
    await members[0].start(view(n1=True, n2=False))
    await members[1].start(view(n1=True, n2=True))
    async with asyncio.timeout(5):
        await observer.wait_for(lambda c: len(c.proxies) == 2)
    # The leases expire one after the other: the last consensus with a live
    # proxy is the one held.
    first, second = members
    assert first.keeper is not None and second.keeper is not None
    await store.revoke(first.keeper.lease_id)
    async with asyncio.timeout(5):
        before = await observer.wait_for(lambda c: c.proxies == {"p1"})
    incarnations = observer.incarnations()
    await store.revoke(second.keeper.lease_id)
    for member in members:  # and they do not come back in this test
        await member.close()
    async with asyncio.timeout(5):
        while observer.proxies():  # noqa: ASYNC110 (the mirror applies the deletions)
            await asyncio.sleep(0.01)
    # Held: the same consensus, the same live incarnations (no write of theirs
    # counts as abandoned meanwhile).
    assert observer.consensus == before and before.healthy("vs") == {"n1", "n2"}
    assert observer.incarnations() == incarnations == {"p1": incarnations["p1"]}
    # Nobody came back within the hold: no live proxy, no healthy node, as before.
    clock.advance(10.5)
    async with asyncio.timeout(5):
        after = await observer.wait_for(lambda c: not c.proxies)
    assert after.healthy("vs") == frozenset() and observer.incarnations() == {}
    await observer.close()
