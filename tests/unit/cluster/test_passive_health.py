"""Passive health: checks out of turn, and the consensus they still have to win.

A node whose connection failed is checked at once (and once more a short
delay later) instead of at the next interval; only this proxy's own checks
move its view, so a suspicion from one proxy can never fail a node over on
its own (the blind-spot rule of the consensus).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from gitquorum.cluster.decisions import failover_done
from gitquorum.cluster.health import (
    TRIGGER_PEER_VIEW,
    GrpcHealthProbe,
    HealthChecker,
    HealthSnapshot,
    consensus,
    next_local_health,
)
from gitquorum.cluster.membership import newly_unhealthy
from gitquorum.cluster.repositories import RepositoryRecord

# (previous, ok, failures before, unhealthy_after) -> (healthy, failures after)
LOCAL_HEALTH = [
    (True, True, 1, 2, (True, 0)),
    (False, True, 5, 2, (True, 0)),  # one good check is enough
    (None, True, 0, 2, (True, 0)),
    (True, False, 0, 2, (True, 1)),  # one failure is tolerated
    (True, False, 1, 2, (False, 2)),  # the second in a row is not
    (None, False, 0, 2, (False, 1)),  # never checked: no leniency
    (False, False, 2, 2, (False, 3)),
    (True, False, 0, 1, (False, 1)),
]


@pytest.mark.parametrize(("previous", "ok", "failures", "after", "expected"), LOCAL_HEALTH)
def test_next_local_health(
    previous: bool | None, ok: bool, failures: int, after: int, expected: tuple[bool, int]
) -> None:
    assert next_local_health(previous, ok, failures, after) == expected


def _checker(
    state: dict[str, bool], published: list[object], probes: list[tuple[str, str, bool]]
) -> HealthChecker:
    async def probe(address: str) -> bool:
        return state[address]

    async def publish(view: object) -> None:
        published.append(view)

    return HealthChecker(
        {"vs": {"n1": "a1", "n2": "a2"}},
        publish=publish,
        probe=probe,
        interval=3600,  # never: every check below is made out of turn
        confirm_delay=0.01,
        observe_probe=lambda _vs, node, trigger, ok: probes.append((node, trigger, ok)),
    )


async def _settled(checker: HealthChecker) -> None:
    for task in list(checker._suspected.values()):
        await task


async def test_a_suspected_dead_node_is_unhealthy_after_two_checks_out_of_turn() -> None:
    state = {"a1": True, "a2": True}
    published: list[object] = []
    probes: list[tuple[str, str, bool]] = []
    checker = _checker(state, published, probes)
    await checker.check_once()
    assert published == [{"vs": {"n1": True, "n2": True}}]
    state["a2"] = False
    checker.suspect("n2")
    checker.suspect("n2")  # one sequence at a time per node
    await _settled(checker)
    assert not checker.is_healthy("vs", "n2") and checker.is_healthy("vs", "n1")
    assert probes == [("n2", "rpc-failed", False), ("n2", "rpc-failed", False)]
    # Published at once, without a round.
    assert published[-1] == {"vs": {"n1": True, "n2": False}} and checker.rounds == 1
    # An unhealthy node is left to the rounds.
    checker.suspect("n2")
    await _settled(checker)
    assert len(probes) == 2


async def test_a_suspected_live_node_stays_healthy() -> None:
    state = {"a1": True, "a2": True}
    published: list[object] = []
    probes: list[tuple[str, str, bool]] = []
    checker = _checker(state, published, probes)
    await checker.check_once()
    checker.suspect("n1", TRIGGER_PEER_VIEW)
    await _settled(checker)
    assert checker.is_healthy("vs", "n1")
    assert probes == [("n1", "peer-view", True)]
    assert published == [{"vs": {"n1": True, "n2": True}}]


async def test_a_check_that_started_earlier_does_not_undo_a_newer_one() -> None:
    """A round that began before the node died answers after the checks out of
    turn saw it dead: the older answer is ignored."""
    gate = asyncio.Event()
    state = {"a1": True, "a2": True}

    async def probe(address: str) -> bool:
        if address == "a2" and state["a2"] and gate.is_set() is False and slow[0]:
            await gate.wait()
            return True
        return state[address]

    slow = [False]
    checker = HealthChecker(
        {"vs": {"n1": "a1", "n2": "a2"}}, probe=probe, interval=3600, confirm_delay=0.0
    )
    await checker.check_once()
    slow[0] = True
    round_task = asyncio.ensure_future(checker.check_once())
    await asyncio.sleep(0)
    state["a2"] = False
    checker.suspect("n2")
    await _settled(checker)
    assert not checker.is_healthy("vs", "n2")
    gate.set()
    await round_task
    assert not checker.is_healthy("vs", "n2")


def test_one_proxys_suspicion_is_not_a_vote() -> None:
    """Two proxies: the one that suspects a node publishes it unhealthy; the other
    checks it and still sees it healthy, and the consensus keeps the node."""
    snapshot = HealthSnapshot(
        frozenset({"a", "b"}), {"a": {"vs": {"n1": False}}, "b": {"vs": {"n1": True}}}
    )
    assert consensus(snapshot).is_healthy("vs", "n1")
    both = HealthSnapshot(
        frozenset({"a", "b"}), {"a": {"vs": {"n1": False}}, "b": {"vs": {"n1": False}}}
    )
    assert not consensus(both).is_healthy("vs", "n1")


@pytest.mark.parametrize(
    ("old", "new", "suspected"),
    [
        (None, {"vs": {"n1": True}}, set()),
        (None, {"vs": {"n1": False}}, {("vs", "n1")}),
        ({"vs": {"n1": True}}, {"vs": {"n1": False}}, {("vs", "n1")}),
        ({"vs": {"n1": False}}, {"vs": {"n1": False}}, set()),  # nothing new
        ({"vs": {"n1": False}}, {"vs": {"n1": True}}, set()),
        ({"vs": {"n1": True, "n2": True}}, {"vs": {"n1": True, "n2": False}}, {("vs", "n2")}),
    ],
)
def test_newly_unhealthy(
    old: dict[str, dict[str, bool]] | None,
    new: dict[str, dict[str, bool]],
    suspected: set[tuple[str, str]],
) -> None:
    assert newly_unhealthy(old, new) == suspected


def _record(primary: str, generations: dict[str, int]) -> RepositoryRecord:
    return RepositoryRecord(
        repository_id=1,
        virtual_storage="vs",
        relative_path="a.git",
        primary=primary,
        assigned=tuple(sorted(generations)),
        generation=max(generations.values()),
        replicas=tuple(sorted(generations.items())),
    )


UP = {"n1": 3, "n2": 3, "n3": 3}


@pytest.mark.parametrize(
    ("record", "healthy", "done"),
    [
        # The consensus still counts the node: one proxy's refused connection
        # is not enough to move the primary (its blind spot).
        (_record("n1", UP), {"n1", "n2", "n3"}, False),
        # The cluster sees it unhealthy: the write's lazy failover may go on.
        (_record("n1", UP), {"n2", "n3"}, True),
        # Someone already moved the primary.
        (_record("n2", UP), {"n1", "n2", "n3"}, True),
        # The primary is behind: not a valid primary any more.
        (_record("n1", {"n1": 2, "n2": 3, "n3": 3}), {"n1", "n2", "n3"}, True),
        # The repository is gone: the retry answers NOT_FOUND.
        (None, {"n2"}, True),
    ],
)
def test_failover_done(record: RepositoryRecord | None, healthy: set[str], done: bool) -> None:
    assert failover_done(record, "n1", frozenset(healthy)) is done


async def test_a_dropped_connection_is_reported_at_once() -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    probe = GrpcHealthProbe(timeout=1.0)
    lost = asyncio.Event()
    seen: list[str] = []

    def connection_lost(address: str) -> None:
        seen.append(address)
        lost.set()

    probe.connection_lost = connection_lost
    address = f"127.0.0.1:{port}"
    try:
        assert await probe(address)
        await server.stop(None)
        async with asyncio.timeout(5):
            await lost.wait()
        assert seen[0] == address
        assert not await probe(address)
    finally:
        await probe.close()
        await server.stop(None)
