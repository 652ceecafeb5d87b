"""Dead repairs made due again when their replica can be repaired, not after the backoff."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import pytest

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.decisions import NO_SOURCE
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import (
    DEAD_RETRY_CAP,
    JobState,
    JobType,
    ReplicationJob,
    ReplicationQueue,
)
from gitquorum.cluster.repositories import RepositoryRecord
from gitquorum.proxy.leader_tasks import LeaderTasks, dead_jobs_to_retry, sourceless_repairs

KEYS = Keyspace("unit")
NOW = 1000.0
ALL = frozenset({"n1", "n2", "n3"})
# n1 is up to date (and primary); n2 is behind.
RECORD = RepositoryRecord(1, "vs", "a.git", "n1", ("n1", "n2"), 5, (("n1", 5), ("n2", 4)))
CAUGHT_UP = RepositoryRecord(1, "vs", "a.git", "n1", ("n1", "n2"), 5, (("n1", 5), ("n2", 5)))


def dead(
    *,
    type: JobType = JobType.UPDATE,
    state: JobState = JobState.DEAD,
    not_before: float = NOW + 600,
    delay: float | None = None,
    last_error: str = "",
    attempts: int = 4,
) -> ReplicationJob:
    return ReplicationJob(
        "j",
        type,
        "vs",
        1,
        "a.git",
        "n2",
        "n1",
        state,
        attempts,
        not_before=not_before,
        delay=delay,
        last_error=last_error,
    )


# What the replication worker's attempts said while no replica could be a
# source (a verifier conflict stood: no node went down, none came back).
NO_SOURCE_ERROR = f"RuntimeError: {NO_SOURCE}"
IN_CONFLICT = replace(RECORD, conflict=("n1", "n3"))


@pytest.mark.parametrize(
    ("job", "record", "healthy", "came_back", "due"),
    [
        pytest.param(dead(), RECORD, ALL, {"n1"}, True, id="the source came back"),
        pytest.param(dead(), RECORD, ALL, {"n2"}, True, id="the target came back"),
        pytest.param(dead(), RECORD, ALL, set(), False, id="nothing came back: keeps its backoff"),
        pytest.param(dead(), RECORD, ALL, {"n3"}, False, id="an unrelated node came back"),
        pytest.param(dead(), RECORD, {"n2", "n3"}, {"n2"}, False, id="no source yet"),
        pytest.param(dead(), RECORD, {"n1", "n3"}, {"n1"}, False, id="target down"),
        pytest.param(
            dead(last_error=NO_SOURCE_ERROR),
            RECORD,
            ALL,
            set(),
            True,
            id="died for want of a source",
        ),
        pytest.param(
            dead(last_error=NO_SOURCE_ERROR),
            IN_CONFLICT,
            ALL,
            set(),
            False,
            id="died for want of a source, still none",
        ),
        pytest.param(
            dead(last_error=NO_SOURCE_ERROR, attempts=6),
            RECORD,
            ALL,
            set(),
            False,
            id="died for want of a source a fourth time: keeps its backoff",
        ),
        pytest.param(dead(), CAUGHT_UP, ALL, {"n1"}, False, id="replica already up to date"),
        pytest.param(dead(), None, ALL, {"n1"}, False, id="repository gone"),
        pytest.param(dead(not_before=NOW), RECORD, ALL, {"n1"}, False, id="already due"),
        pytest.param(
            dead(not_before=NOW + 600, delay=0.0), RECORD, ALL, {"n1"}, False, id="made due already"
        ),
        pytest.param(
            dead(not_before=NOW, delay=60.0),
            RECORD,
            ALL,
            {"n1"},
            True,
            id="due on this clock, maybe not on a slower one",
        ),
        pytest.param(dead(state=JobState.FAILED), RECORD, ALL, {"n1"}, False, id="not dead"),
        pytest.param(
            dead(type=JobType.DELETE_REPLICA), RECORD, ALL, {"n1"}, False, id="not a repair"
        ),
    ],
)
def test_dead_jobs_to_retry(
    job: ReplicationJob,
    record: RepositoryRecord | None,
    healthy: set[str],
    came_back: set[str],
    due: bool,
) -> None:
    records = {("vs", 1): record} if record is not None else {}
    found = dead_jobs_to_retry(
        [job], records, {"vs": frozenset(healthy)}, {"vs": frozenset(came_back)}, NOW
    )
    assert found == ([job] if due else [])


LATE_NO_SOURCE = dead(last_error=NO_SOURCE_ERROR, attempts=6)  # its fourth death


@pytest.mark.parametrize(
    ("sourceless_before", "due"),
    [
        pytest.param(frozenset({"j"}), True, id="the leader saw it without a source last pass"),
        pytest.param(frozenset(), False, id="it had a source at the last pass too"),
        pytest.param(None, True, id="first pass of a leadership"),
    ],
)
def test_a_long_conflict_ending_makes_its_repairs_due(
    sourceless_before: frozenset[str] | None, due: bool
) -> None:
    """A conflict that outlived the early retries: its end (a source again
    where the last pass saw none) makes the repair due, whatever its deaths."""
    found = dead_jobs_to_retry(
        [LATE_NO_SOURCE],
        {("vs", 1): RECORD},
        {"vs": ALL},
        {"vs": frozenset()},
        NOW,
        sourceless_before=sourceless_before,
    )
    assert found == ([LATE_NO_SOURCE] if due else [])


def test_sourceless_repairs_are_the_dead_repairs_with_no_source_now() -> None:
    records = {("vs", 1): IN_CONFLICT}
    assert sourceless_repairs([LATE_NO_SOURCE], records, {"vs": ALL}) == {"j"}
    assert sourceless_repairs([LATE_NO_SOURCE], {("vs", 1): RECORD}, {"vs": ALL}) == frozenset()
    # Its source down: none either.
    source_down = {"vs": frozenset({"n2"})}
    assert sourceless_repairs([LATE_NO_SOURCE], {("vs", 1): RECORD}, source_down) == {"j"}
    assert sourceless_repairs([dead(state=JobState.FAILED)], records, {"vs": ALL}) == frozenset()


class MutableHealth:
    def __init__(self, healthy: set[str]) -> None:
        self.nodes = frozenset(healthy)
        self.listeners: list[Callable[[object, object], None]] = []

    def add_listener(self, callback: Callable[[object, object], None]) -> None:
        self.listeners.append(callback)

    def set(self, healthy: set[str]) -> None:
        self.nodes = frozenset(healthy)
        for callback in self.listeners:
            callback(None, None)

    def healthy(self, _virtual_storage: str) -> frozenset[str]:
        return self.nodes


class StaticCache:
    def records(self, _virtual_storage: str | None = None) -> tuple[RepositoryRecord, ...]:
        return (RECORD,)


@dataclass
class Worker:
    name: str
    lease_id: int


async def test_a_source_back_after_hours_gets_its_replica_repaired_within_a_pass() -> None:
    """The source is down for hours: the replica's job dies and backs off to
    the hour. When the source comes back, the health change makes the job due
    at once: it runs on the worker's next poll, not up to an hour later."""
    clock = ManualClock(NOW)
    store = MemoryStore(clock)
    queue = ReplicationQueue(store, KEYS, max_attempts=3, backoff=1.0, clock=clock)
    worker = Worker("w", (await store.grant(10**9)).id)
    health = MutableHealth({"n1", "n2", "n3"})
    unused: object = object()
    tasks = LeaderTasks(
        unused,  # type: ignore[arg-type]
        unused,  # type: ignore[arg-type]
        StaticCache(),  # type: ignore[arg-type]
        health,  # type: ignore[arg-type]
        queue,
        unused,  # type: ignore[arg-type]
        None,
        reconcile_interval=30.0,
    )
    await tasks.retry_dead_jobs_once()  # the leadership's first pass
    # A write left n2 behind; then n1, the only up-to-date replica, went down.
    job = await queue.enqueue(JobType.UPDATE, "vs", 1, "a.git", "n2", source_node="n1")
    health.set({"n2", "n3"})
    attempts: list[float] = []

    async def work() -> None:
        # What the worker's replicator does while n1 is down.
        while (claim := await queue.claim_next(worker)) is not None:
            attempts.append(clock.now())
            if "n1" in health.healthy("vs"):
                await queue.ack(claim)
            else:
                await queue.fail(claim, "no healthy, up-to-date replica to replicate from")

    # Three hours of passes: every 30 s a reconciler-interval pass (and the
    # health-change pass while the wake is set), the worker polling every second.
    for second in range(3 * 3600):
        if tasks._dead_jobs_wake.is_set() or second % 30 == 0:
            tasks._dead_jobs_wake.clear()
            await tasks.retry_dead_jobs_once()
        await work()
        clock.advance(1.0)
    assert attempts, "the job never ran"
    dead_now = [j for j in await queue.jobs() if j.state is JobState.DEAD]
    assert [j.job_id for j in dead_now] == [job.job_id]
    # Backing off by the hour; its next retry is more than a reconciler pass away.
    assert attempts[-1] - attempts[-2] == DEAD_RETRY_CAP
    assert dead_now[0].not_before - clock.now() > 30
    # n1 comes back: the health change wakes the dead-job pass.
    returned = clock.now()
    health.set({"n1", "n2", "n3"})
    assert tasks._dead_jobs_wake.is_set()
    tasks._dead_jobs_wake.clear()
    assert await tasks.retry_dead_jobs_once() == 1
    await work()
    assert attempts[-1] == returned
    assert await queue.jobs() == []
