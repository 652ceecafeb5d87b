"""Routing over repository records: which replicas serve a read, a write, maintenance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import pytest

from gitquorum.cluster.repositories import RepositoryRecord
from gitquorum.errors import FailedPrecondition, Unavailable
from gitquorum.proxy import routing

NODES = ("n1", "n2", "n3")
ALL = frozenset(NODES)


def rec(
    generation: int,
    replicas: Mapping[str, int],
    primary: str | None = "n1",
    assigned: tuple[str, ...] = NODES,
) -> RepositoryRecord:
    return RepositoryRecord(7, "vs", "r.git", primary, assigned, generation, ()).with_replicas(
        replicas
    )


def first(nodes: Sequence[str]) -> str:
    return nodes[0]


CURRENT = rec(2, {"n1": 2, "n2": 2, "n3": 2})


@pytest.mark.parametrize(
    ("record", "healthy", "draining", "primary_only", "expected"),
    [
        pytest.param(CURRENT, ALL, frozenset(), False, ("n1", "distributed"), id="any up to date"),
        pytest.param(
            rec(2, {"n1": 1, "n2": 2}),
            ALL,
            frozenset(),
            False,
            ("n2", "distributed"),
            id="outdated skipped",
        ),
        pytest.param(
            CURRENT, ALL, frozenset({"n1"}), False, ("n2", "distributed"), id="drained last"
        ),
        pytest.param(
            CURRENT,
            ALL,
            frozenset(ALL),
            False,
            ("n1", "distributed"),
            id="only drained: still served",
        ),
        pytest.param(
            rec(2, {"n1": 2, "n9": 2}),
            ALL,
            frozenset(),
            False,
            ("n1", "distributed"),
            id="unassigned skipped",
        ),
        pytest.param(CURRENT, ALL, frozenset(), True, ("n1", "primary-only"), id="primary only"),
        pytest.param(
            replace(CURRENT, primary="n2", conflict=("n1", "n2")),
            ALL,
            frozenset(),
            False,
            ("n2", "primary-only"),
            id="replicas in conflict: the primary's side only",
        ),
        pytest.param(
            replace(CURRENT, primary="n2", conflict=("n1", "n2")),
            frozenset({"n1", "n3"}),
            frozenset(),
            False,
            ("n1", "distributed"),
            id="conflict, primary down: always the same replica",
        ),
    ],
)
def test_route_accessor(
    record: RepositoryRecord,
    healthy: frozenset[str],
    draining: frozenset[str],
    primary_only: bool,
    expected: tuple[str, str],
) -> None:
    route = routing.route_accessor(
        record, healthy, NODES, primary_only=primary_only, choose=first, draining=draining
    )
    assert (route.node, route.reason) == expected
    assert route.replica_path == record.replica_path


@pytest.mark.parametrize(
    ("record", "healthy", "primary_only"),
    [
        pytest.param(rec(2, {"n1": 1, "n2": 1}), ALL, False, id="nothing up to date"),
        pytest.param(CURRENT, frozenset(), False, id="nothing healthy"),
        pytest.param(CURRENT, frozenset({"n2"}), True, id="primary only: primary unhealthy"),
        pytest.param(rec(2, {"n1": 1, "n2": 2}), ALL, True, id="primary only: primary outdated"),
        pytest.param(rec(2, {"n1": 2}, primary=None), ALL, True, id="primary only: no primary"),
    ],
)
def test_route_accessor_unavailable(
    record: RepositoryRecord, healthy: frozenset[str], primary_only: bool
) -> None:
    with pytest.raises(Unavailable):
        routing.route_accessor(record, healthy, NODES, primary_only=primary_only, choose=first)


@pytest.mark.parametrize(
    ("record", "healthy", "transactional", "secondaries", "targets"),
    [
        pytest.param(CURRENT, ALL, True, ("n2", "n3"), (), id="all up to date"),
        pytest.param(
            rec(2, {"n1": 2, "n2": 2, "n3": 1}),
            ALL,
            True,
            ("n2",),
            ("n3",),
            id="outdated replicated",
        ),
        pytest.param(
            CURRENT, frozenset({"n1", "n3"}), True, ("n3",), ("n2",), id="unhealthy replicated"
        ),
        pytest.param(CURRENT, ALL, False, (), ("n2", "n3"), id="not transactional"),
    ],
)
def test_route_mutator(
    record: RepositoryRecord,
    healthy: frozenset[str],
    transactional: bool,
    secondaries: tuple[str, ...],
    targets: tuple[str, ...],
) -> None:
    route = routing.route_mutator(record, healthy, NODES, transactional=transactional)
    assert route.primary == "n1" and route.generation == record.generation
    assert (route.secondaries, route.replication_targets) == (secondaries, targets)


@pytest.mark.parametrize(
    ("record", "healthy", "error"),
    [
        pytest.param(CURRENT, frozenset({"n2", "n3"}), Unavailable, id="primary unhealthy"),
        pytest.param(rec(2, {"n2": 2}, primary=None), ALL, Unavailable, id="no primary"),
        pytest.param(rec(2, {"n1": 1, "n2": 2}), ALL, FailedPrecondition, id="primary outdated"),
    ],
)
def test_route_mutator_refused(
    record: RepositoryRecord, healthy: frozenset[str], error: type[Exception]
) -> None:
    with pytest.raises(error):
        routing.route_mutator(record, healthy, NODES)


def test_route_maintenance_and_removal_use_existing_replicas() -> None:
    record = rec(2, {"n1": 2, "n2": 1}, assigned=("n1", "n2"))
    assert routing.route_maintenance(record, ALL, NODES).nodes == ("n1", "n2")
    assert routing.route_maintenance(record, frozenset({"n2"}), NODES).nodes == ("n2",)
    with pytest.raises(Unavailable):
        routing.route_maintenance(record, frozenset({"n3"}), NODES)
    spread = rec(2, {"n1": 2, "n3": 0}, assigned=("n1", "n2"))
    assert routing.route_removal(spread, NODES).nodes == ("n1", "n2", "n3")


def test_reads_of_replicas_in_conflict_always_go_to_the_same_one() -> None:
    record = replace(CURRENT, primary="n2", conflict=("n1", "n3"))
    served = {
        routing.route_accessor(record, frozenset({"n1", "n3"}), NODES, choose=lambda n: n[-1]).node
        for _ in range(5)
    }
    assert served == {"n1"}
    # No fallback either: a retry or a hedge could read the other side.
    assert routing.route_accessor(record, frozenset({"n1", "n3"}), NODES).candidates == ("n1",)
    # Without a conflict the same choice spreads the reads as usual.
    spread = routing.route_accessor(CURRENT, frozenset({"n1", "n3"}), NODES, choose=lambda n: n[-1])
    assert spread.node == "n3"


@pytest.mark.parametrize(
    ("draining", "ejected", "candidates"),
    [
        pytest.param(frozenset(), frozenset(), ("n1", "n2", "n3"), id="every replica, in order"),
        pytest.param(frozenset({"n1"}), frozenset(), ("n2", "n3", "n1"), id="drained last"),
        pytest.param(frozenset(), frozenset({"n2"}), ("n1", "n3", "n2"), id="ejected last"),
        pytest.param(
            frozenset({"n1", "n2"}), frozenset({"n3"}), ("n1", "n2", "n3"), id="drained first"
        ),
        pytest.param(
            frozenset({"n3"}), frozenset({"n1"}), ("n2", "n3", "n1"), id="drained before ejected"
        ),
        pytest.param(frozenset(), frozenset(ALL), ("n1", "n2", "n3"), id="all ejected: all serve"),
    ],
)
def test_route_accessor_falls_back_to_every_up_to_date_replica(
    draining: frozenset[str], ejected: frozenset[str], candidates: tuple[str, ...]
) -> None:
    route = routing.route_accessor(
        CURRENT, ALL, NODES, choose=first, draining=draining, ejected=ejected
    )
    # The fallbacks after the first are shuffled within their tier: compare tiers.
    assert route.node == candidates[0]
    assert sorted(route.candidates) == sorted(candidates)
    tier = [n in draining or n in ejected for n in route.candidates]
    assert tier == [n in draining or n in ejected for n in candidates]


def test_route_accessor_primary_only_has_no_fallback() -> None:
    route = routing.route_accessor(CURRENT, ALL, NODES, primary_only=True, choose=first)
    assert route.candidates == ("n1",)


@pytest.mark.parametrize(
    ("record", "healthy", "primary_only", "expected"),
    [
        pytest.param(
            CURRENT, frozenset(), False, ("n1", ("n2", "n3")), id="no node healthy: every replica"
        ),
        pytest.param(
            rec(2, {"n1": 1, "n2": 2, "n3": 2}),
            frozenset({"n1"}),
            False,
            ("n2", ("n3",)),
            id="only an outdated replica healthy: the up-to-date ones",
        ),
        pytest.param(
            rec(2, {"n1": 2, "n2": 1, "n3": 1}),
            frozenset({"n2", "n3"}),
            False,
            ("n1", ()),
            id="the lone up-to-date replica",
        ),
        pytest.param(CURRENT, frozenset({"n2"}), True, ("n1", ()), id="primary only"),
    ],
)
def test_route_accessor_last_resort(
    record: RepositoryRecord,
    healthy: frozenset[str],
    primary_only: bool,
    expected: tuple[str, tuple[str, ...]],
) -> None:
    route = routing.route_accessor(
        record, healthy, NODES, primary_only=primary_only, choose=first, last_resort=True
    )
    assert (route.node, route.fallbacks) == expected
    assert route.last_resort and route.reason == "last-resort"
    # Without the last resort the same read is refused.
    with pytest.raises(Unavailable):
        routing.route_accessor(record, healthy, NODES, primary_only=primary_only, choose=first)


@pytest.mark.parametrize(
    ("record", "healthy", "primary_only"),
    [
        pytest.param(rec(2, {"n1": 1, "n2": 1}), ALL, False, id="nothing up to date"),
        pytest.param(
            rec(2, {"n1": 1, "n9": 2}), frozenset(), False, id="up to date only unassigned"
        ),
        pytest.param(rec(2, {"n1": 1, "n2": 2}), ALL, True, id="primary only: primary outdated"),
        pytest.param(
            replace(CURRENT, primary="n2", conflict=("n1", "n2")),
            frozenset(),
            False,
            id="replicas in conflict: proxies could pick different sides",
        ),
    ],
)
def test_route_accessor_last_resort_never_reads_what_may_be_stale(
    record: RepositoryRecord, healthy: frozenset[str], primary_only: bool
) -> None:
    with pytest.raises(Unavailable):
        routing.route_accessor(
            record, healthy, NODES, primary_only=primary_only, choose=first, last_resort=True
        )


def test_route_accessor_last_resort_only_when_no_healthy_replica_is_up_to_date() -> None:
    healthy = frozenset({"n3"})
    route = routing.route_accessor(CURRENT, healthy, NODES, choose=first, last_resort=True)
    assert (route.node, route.reason, route.fallbacks) == ("n3", "distributed", ())


def test_route_accessor_last_resort_reads_in_the_same_order_on_every_proxy() -> None:
    # Whatever the proxy ejected or would pick at random: primary first, then by name.
    record = replace(CURRENT, primary="n2")
    for ejected in (frozenset(), frozenset({"n2"}), frozenset({"n1", "n3"})):
        route = routing.route_accessor(
            record, frozenset(), NODES, ejected=ejected, last_resort=True
        )
        assert route.candidates == ("n2", "n1", "n3")
