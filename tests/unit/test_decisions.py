"""The pure cluster decisions: every branch of every rule, one table row each."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from gitquorum.cluster.decisions import (
    Repair,
    choose_primary,
    choose_source,
    outdated_replicas,
    pending_repairs,
    prefer_undrained,
    primary_is_valid,
    primary_load,
    repairs,
    up_to_date_replicas,
    valid_primaries,
)
from gitquorum.cluster.queue import JobState, JobType, ReplicationJob
from gitquorum.cluster.repositories import RepositoryRecord

ALL = frozenset({"n1", "n2", "n3"})
NONE: frozenset[str] = frozenset()
CREATE, UPDATE = JobType.CREATE, JobType.UPDATE


def rec(
    generation: int,
    replicas: Mapping[str, int],
    primary: str | None = "n1",
    assigned: tuple[str, ...] = ("n1", "n2", "n3"),
    rid: int = 1,
) -> RepositoryRecord:
    return RepositoryRecord(
        rid, "vs", f"r{rid}.git", primary, assigned, generation, ()
    ).with_replicas(replicas)


CURRENT = rec(2, {"n1": 2, "n2": 2, "n3": 2})
# n1's replica is behind; n2 and n3 are up to date.
PRIMARY_BEHIND = rec(2, {"n1": 1, "n2": 2, "n3": 2})
# n1 and n2 up to date, n3 behind.
N3_BEHIND = rec(2, {"n1": 2, "n2": 2, "n3": 1})
# Only n1 up to date.
ONLY_N1 = rec(2, {"n1": 2, "n2": 1, "n3": 0})


# -- replica states ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        pytest.param(CURRENT, ALL, id="all current"),
        pytest.param(PRIMARY_BEHIND, {"n2", "n3"}, id="one behind"),
        pytest.param(rec(3, {"n1": 3, "n9": 3}), {"n1", "n9"}, id="unassigned counts"),
        pytest.param(rec(1, {}), NONE, id="no replica"),
    ],
)
def test_up_to_date_replicas(record: RepositoryRecord, expected: frozenset[str]) -> None:
    assert up_to_date_replicas(record) == expected


@pytest.mark.parametrize(
    ("record", "healthy", "expected"),
    [
        pytest.param(CURRENT, ALL, ALL, id="all valid"),
        pytest.param(CURRENT, {"n2"}, {"n2"}, id="unhealthy excluded"),
        pytest.param(PRIMARY_BEHIND, ALL, {"n2", "n3"}, id="outdated excluded"),
        pytest.param(rec(2, {"n1": 1, "n9": 2}), {"n1", "n9"}, NONE, id="unassigned excluded"),
        pytest.param(
            rec(2, {"n1": 2, "n9": 2}, assigned=()),
            ALL | {"n9"},
            {"n1", "n9"},
            id="no assignment: all",
        ),
        pytest.param(rec(2, {"n1": 1, "n2": 1}), ALL, NONE, id="none valid"),
    ],
)
def test_valid_primaries(
    record: RepositoryRecord, healthy: frozenset[str], expected: frozenset[str]
) -> None:
    assert valid_primaries(record, healthy) == expected


@pytest.mark.parametrize(
    ("record", "healthy", "expected"),
    [
        pytest.param(CURRENT, ALL, True, id="valid"),
        pytest.param(CURRENT, {"n2", "n3"}, False, id="primary unhealthy"),
        pytest.param(PRIMARY_BEHIND, ALL, False, id="primary outdated"),
        pytest.param(
            rec(2, {"n9": 2, "n1": 2}, primary="n9"), ALL | {"n9"}, False, id="primary unassigned"
        ),
        pytest.param(rec(2, {"n1": 2}, primary=None), ALL, False, id="no primary"),
    ],
)
def test_primary_is_valid(
    record: RepositoryRecord, healthy: frozenset[str], expected: bool
) -> None:
    assert primary_is_valid(record, healthy) is expected


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        pytest.param(CURRENT, (), id="none"),
        pytest.param(
            rec(3, {"n1": 3, "n3": 1}), ("n2", "n3"), id="missing and behind, assignment order"
        ),
        pytest.param(rec(3, {"n1": 3, "n9": 1}), ("n2", "n3"), id="unassigned replica ignored"),
        pytest.param(
            rec(3, {"n1": 3, "n9": 1}, assigned=()), ("n9",), id="no assignment: replica nodes"
        ),
    ],
)
def test_outdated_replicas(record: RepositoryRecord, expected: tuple[str, ...]) -> None:
    assert outdated_replicas(record) == expected


# -- primary -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nodes", "draining", "expected"),
    [
        pytest.param({"a", "b"}, NONE, {"a", "b"}, id="none drained"),
        pytest.param({"a", "b"}, {"a"}, {"b"}, id="drained left out"),
        pytest.param({"a", "b"}, {"a", "b"}, {"a", "b"}, id="all drained: all"),
        pytest.param(NONE, {"a"}, NONE, id="empty"),
    ],
)
def test_prefer_undrained(
    nodes: frozenset[str], draining: frozenset[str], expected: frozenset[str]
) -> None:
    assert prefer_undrained(frozenset(nodes), frozenset(draining)) == expected


def test_primary_load_counts_primaries_and_skips_repositories_without_one() -> None:
    records = [
        rec(1, {"n1": 1}, primary="n1", rid=1),
        rec(1, {"n1": 1}, primary="n1", rid=2),
        rec(1, {"n2": 1}, primary="n2", rid=3),
        rec(1, {"n2": 1}, primary=None, rid=4),
    ]
    assert primary_load(records) == {"n1": 2, "n2": 1}
    assert primary_load([]) == {}


@pytest.mark.parametrize(
    ("record", "healthy", "load", "draining", "exclude", "expected"),
    [
        pytest.param(
            CURRENT, ALL, {"n1": 9}, NONE, NONE, "n1", id="valid primary kept despite load"
        ),
        pytest.param(CURRENT, ALL, {}, {"n1"}, NONE, "n1", id="valid primary kept while drained"),
        pytest.param(
            CURRENT,
            {"n2", "n3"},
            {"n2": 3, "n3": 1},
            NONE,
            NONE,
            "n3",
            id="primary unhealthy: least loaded",
        ),
        pytest.param(PRIMARY_BEHIND, ALL, {}, NONE, NONE, "n2", id="primary outdated: tie by name"),
        pytest.param(
            rec(2, {"n9": 2, "n2": 2}, primary="n9"),
            ALL | {"n9"},
            {},
            NONE,
            NONE,
            "n2",
            id="primary unassigned",
        ),
        pytest.param(
            rec(2, {"n2": 2, "n3": 2}, primary=None), ALL, {}, NONE, NONE, "n2", id="no primary"
        ),
        pytest.param(
            CURRENT,
            {"n2", "n3"},
            {"n2": 1, "n3": 1},
            NONE,
            NONE,
            "n2",
            id="equal load: tie by name",
        ),
        pytest.param(
            CURRENT, {"n2", "n3"}, {"n2": 5}, NONE, NONE, "n3", id="load balance: absent is zero"
        ),
        pytest.param(
            CURRENT, {"n2", "n3"}, {"n3": 10}, {"n2"}, NONE, "n3", id="drained last despite load"
        ),
        pytest.param(
            CURRENT,
            {"n2", "n3"},
            {"n2": 2, "n3": 1},
            {"n2", "n3"},
            NONE,
            "n3",
            id="only drained candidates",
        ),
        pytest.param(
            ONLY_N1,
            {"n2", "n3"},
            {},
            NONE,
            NONE,
            None,
            id="no valid candidate: none, not a stale replica",
        ),
        pytest.param(
            rec(2, {"n1": 1, "n2": 2, "n9": 2}, assigned=("n1", "n2")),
            {"n1", "n9"},
            {},
            NONE,
            NONE,
            None,
            id="unassigned or unhealthy: none",
        ),
        pytest.param(
            CURRENT, ALL, {"n2": 1}, NONE, {"n1"}, "n3", id="switchover: current excluded"
        ),
        pytest.param(
            CURRENT, ALL, {}, {"n2", "n3"}, {"n1"}, "n2", id="switchover: only drained left"
        ),
        pytest.param(ONLY_N1, ALL, {}, NONE, {"n1"}, None, id="switchover: nothing else valid"),
        pytest.param(
            rec(2, {"n1": 1, "n3": 2}, assigned=()),
            ALL,
            {},
            NONE,
            NONE,
            "n3",
            id="no assignment: every replica",
        ),
    ],
)
def test_choose_primary(
    record: RepositoryRecord,
    healthy: frozenset[str],
    load: dict[str, int],
    draining: frozenset[str],
    exclude: frozenset[str],
    expected: str | None,
) -> None:
    chosen = choose_primary(
        record,
        frozenset(healthy),
        load=load,
        draining=frozenset(draining),
        exclude=frozenset(exclude),
    )
    assert chosen == expected


# -- replication source ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "healthy", "target", "preferred", "expected"),
    [
        pytest.param(N3_BEHIND, ALL, "n3", None, "n1", id="primary"),
        pytest.param(N3_BEHIND, ALL, "n3", "n2", "n2", id="preferred over primary"),
        pytest.param(N3_BEHIND, ALL, "n3", "n3", "n1", id="preferred is the target"),
        pytest.param(
            PRIMARY_BEHIND, ALL, "n2", "n1", "n3", id="preferred outdated: primary invalid too"
        ),
        pytest.param(N3_BEHIND, {"n2", "n3"}, "n3", None, "n2", id="primary unhealthy"),
        pytest.param(
            rec(2, {"n1": 1, "n2": 1, "n3": 2, "n0": 2}),
            ALL | {"n0"},
            "n1",
            None,
            "n3",
            id="assigned before unassigned",
        ),
        pytest.param(
            rec(2, {"n1": 1, "n0": 2}), ALL | {"n0"}, "n1", None, "n0", id="only an unassigned one"
        ),
        pytest.param(
            rec(2, {"n1": 2, "n2": 2, "n3": 2}), ALL, "n1", None, "n2", id="primary is the target"
        ),
        pytest.param(ONLY_N1, {"n2", "n3"}, "n3", None, None, id="no healthy up-to-date replica"),
        pytest.param(ONLY_N1, ALL, "n1", None, None, id="only the target is up to date"),
    ],
)
def test_choose_source(
    record: RepositoryRecord,
    healthy: frozenset[str],
    target: str,
    preferred: str | None,
    expected: str | None,
) -> None:
    assert choose_source(record, frozenset(healthy), target=target, preferred=preferred) == expected


# -- repairs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "healthy", "targets", "pending", "expected"),
    [
        pytest.param(CURRENT, ALL, None, NONE, (), id="all up to date: none"),
        pytest.param(
            N3_BEHIND,
            ALL,
            None,
            NONE,
            (Repair(UPDATE, "n3", "n1"),),
            id="behind: update from the primary",
        ),
        pytest.param(
            N3_BEHIND,
            {"n1", "n2"},
            None,
            NONE,
            (Repair(UPDATE, "n3", "n1"),),
            id="unhealthy target: queued, held until it is back",
        ),
        pytest.param(
            rec(0, {"n1": 0, "n2": 0}),
            ALL,
            None,
            NONE,
            (Repair(CREATE, "n3", "n1"),),
            id="not created: create",
        ),
        pytest.param(N3_BEHIND, ALL, None, {("vs", "n3", 1)}, (), id="pending job: deduplicated"),
        pytest.param(
            N3_BEHIND,
            ALL,
            None,
            {("vs", "n3", 2), ("other", "n3", 1)},
            (Repair(UPDATE, "n3", "n1"),),
            id="pending elsewhere: not this one",
        ),
        pytest.param(ONLY_N1, ALL, {"n3"}, NONE, (Repair(UPDATE, "n3", "n1"),), id="targets limit"),
        pytest.param(N3_BEHIND, ALL, {"n1"}, NONE, (), id="target up to date: none"),
        pytest.param(
            ONLY_N1,
            ALL,
            None,
            NONE,
            (Repair(UPDATE, "n2", "n1"), Repair(UPDATE, "n3", "n1")),
            id="several, in assignment order",
        ),
        pytest.param(
            rec(2, {"n1": 2, "n3": 1}),
            ALL,
            None,
            NONE,
            (Repair(CREATE, "n2", "n1"), Repair(UPDATE, "n3", "n1")),
            id="create and update",
        ),
        pytest.param(
            N3_BEHIND,
            {"n2", "n3"},
            None,
            NONE,
            (Repair(UPDATE, "n3", "n2"),),
            id="primary invalid: another source",
        ),
        pytest.param(
            PRIMARY_BEHIND,
            ALL,
            None,
            NONE,
            (Repair(UPDATE, "n1", "n2"),),
            id="primary behind is repaired",
        ),
        pytest.param(ONLY_N1, {"n2", "n3"}, None, NONE, (), id="no valid source: none"),
        pytest.param(
            rec(2, {"n1": 2, "n2": 2, "n3": 2, "n9": 1}),
            ALL,
            None,
            NONE,
            (),
            id="unassigned replica: none",
        ),
        pytest.param(
            rec(2, {"n1": 2, "n9": 1}, assigned=()),
            ALL,
            None,
            NONE,
            (Repair(UPDATE, "n9", "n1"),),
            id="no assignment: replica nodes",
        ),
    ],
)
def test_repairs(
    record: RepositoryRecord,
    healthy: frozenset[str],
    targets: frozenset[str] | None,
    pending: frozenset[tuple[str, str, int]],
    expected: tuple[Repair, ...],
) -> None:
    assert (
        repairs(record, frozenset(healthy), targets=targets, pending=frozenset(pending)) == expected
    )


def _job(state: JobState, target: str = "n2", rid: int = 1) -> ReplicationJob:
    return ReplicationJob("j", UPDATE, "vs", rid, "r.git", target, "n1", state=state)


@pytest.mark.parametrize(
    ("state", "pending"),
    [
        pytest.param(JobState.READY, True, id="ready"),
        pytest.param(JobState.IN_PROGRESS, True, id="in progress"),
        pytest.param(JobState.FAILED, True, id="failed: retried by the queue"),
        pytest.param(JobState.DEAD, True, id="dead: retried by the queue, never duplicated"),
    ],
)
def test_pending_repairs(state: JobState, pending: bool) -> None:
    expected = {("vs", "n2", 1)} if pending else set()
    assert pending_repairs([_job(state)]) == expected


def test_pending_repairs_keys_by_replica() -> None:
    jobs = [
        _job(JobState.READY, "n2", 1),
        _job(JobState.READY, "n2", 1),
        _job(JobState.FAILED, "n3", 2),
    ]
    assert pending_repairs(jobs) == {("vs", "n2", 1), ("vs", "n3", 2)}
