"""Random interleavings of write outcomes, repairs, failovers and verifier results.

A model tracks which writes each replica really holds; the cluster side is
the real finalizer (``EtcdClusterPort.record_write``: one txn per outcome) and
the real record operations over the in-memory store, with the real routing and
choice functions. After every step: some replica is up to date, and every
replica recorded up to date holds every acknowledged write.

A write lands on some of its replicas, and its outcome is recorded later (two
steps, other steps may come between). A repair
is two steps: it reads the record and snapshots its source (the fetch reading
the source's references), and later overwrites its target with that snapshot
and records the target (the fetch updating the target's references, then the
record update). Writes that land on the target between the two are lost there,
the race a repair has with a write on its target.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.decisions import (
    WriteResult,
    choose_primary,
    choose_source,
    up_to_date_replicas,
)
from gitquorum.cluster.errors import (
    Conflict,
    DowngradeAttempted,
    FailedPrecondition,
    WriteToOutdatedReplicas,
)
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.repositories import RepositoryCache, RepositoryRecord, RepositoryStore
from gitquorum.errors import GitquorumError
from gitquorum.proxy.routing import MutatorRoute, route_mutator
from tests.unit.proxy.finalizer_parts import KEYS, NODES, memory_port

VS = "vs"
T = TypeVar("T")


@dataclass(frozen=True)
class InFlight:
    write_id: int
    route: MutatorRoute
    applied: frozenset[str] | None = None  # where it landed; None: not yet


@dataclass(frozen=True)
class Copying:
    target: str
    generation: int  # the source's generation read before copying
    snapshot: frozenset[int]  # the writes the source held when the fetch read it


class WriteOutcomes(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.holds: dict[str, set[int]] = {n: set() for n in NODES}
        self.acknowledged: set[int] = set()
        self.in_flight: list[InFlight] = []
        self.copying: list[Copying] = []
        self.next_write = 1

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coroutine, 10))

    @initialize()
    def create(self) -> None:
        async def setup() -> RepositoryRecord:
            self.store = MemoryStore(ManualClock())
            self.repos = RepositoryStore(self.store, KEYS, rng=random.Random(1))
            self.cache = RepositoryCache(self.store, KEYS)
            await self.cache.start()
            self.port = memory_port(self.store, self.repos, self.cache, virtual_storage=VS)
            return await self.repos.create(VS, "a.git", nodes=NODES, healthy=set(NODES))

        self.repository_id = self.run(setup()).repository_id

    def teardown(self) -> None:
        if hasattr(self, "cache"):
            self.run(self.cache.close())
        self.loop.close()

    def record(self) -> RepositoryRecord:
        return self.run(self.repos.get(VS, self.repository_id))

    # -- steps ---------------------------------------------------------------------------

    @rule(healthy=st.sets(st.sampled_from(NODES)))
    def start_write(self, healthy: set[str]) -> None:
        """Route a write as the proxy does (primary plus healthy up-to-date secondaries)."""
        current = self.record()
        try:
            route = route_mutator(current, frozenset(healthy), NODES)
        except GitquorumError:
            return  # unavailable or read-only: no write starts
        self.in_flight.append(InFlight(self.next_write, route))
        self.next_write += 1

    @rule(data=st.data(), pick=st.integers(min_value=0))
    def land_write(self, data: st.DataObject, pick: int) -> None:
        """A write's update is applied on some of its participants."""
        waiting = [w for w in self.in_flight if w.applied is None]
        if waiting:
            self._land(waiting[pick % len(waiting)], data)

    def _land(self, write: InFlight, data: st.DataObject) -> InFlight:
        applied = data.draw(st.sets(st.sampled_from(write.route.participants)), label="applied")
        for node in applied:
            self.holds[node].add(write.write_id)
        landed = replace(write, applied=frozenset(applied))
        self.in_flight[self.in_flight.index(write)] = landed
        return landed

    @rule(
        data=st.data(),
        pick=st.integers(min_value=0),
        acknowledged=st.booleans(),
    )
    def finish_write(self, data: st.DataObject, pick: int, acknowledged: bool) -> None:
        """A write's outcome is recorded (it lands first if it has not)."""
        if not self.in_flight:
            return
        write = self.in_flight[pick % len(self.in_flight)]
        if write.applied is None:
            write = self._land(write, data)
        self.in_flight.remove(write)
        route = write.route
        participants = route.participants
        applied = write.applied or frozenset()
        known = (
            data.draw(st.sets(st.sampled_from(sorted(applied))), label="known")
            if applied
            else set()
        )
        targets = frozenset(route.replication_targets)
        if known:
            # Known holders move on, every other replica is behind (committed,
            # secondaries-outdated, primary-failed-after-commit).
            result = WriteResult(
                frozenset(known), frozenset(participants) - known | targets, "committed"
            )
        else:
            # A decided vote nobody is known to hold (primary-not-committed,
            # abandoned without holders): the secondaries may hold it.
            result = WriteResult(frozenset(), frozenset(route.secondaries) | targets, "unknown")
        try:
            self.run(self.port.record_write(VS, route, result))
        except WriteToOutdatedReplicas:
            return  # the client gets UNAVAILABLE: not acknowledged
        # Only a primary that committed answers the client with success.
        if acknowledged and route.primary in known:
            self.acknowledged.add(write.write_id)

    @rule(node=st.sampled_from(NODES))
    def start_repair(self, node: str) -> None:
        """A replication job reads the record and its fetch reads an up-to-date
        replica's references (one job per target at a time, as the queue's
        per-replica claim ensures)."""
        current = self.record()
        if current.replica_generation(node) >= current.generation:
            return
        if any(copy.target == node for copy in self.copying):
            return
        source = choose_source(current, frozenset(NODES), target=node)
        if source is None:
            return
        self.copying.append(
            Copying(node, current.replica_generation(source), frozenset(self.holds[source]))
        )

    @rule(pick=st.integers(min_value=0))
    def finish_repair(self, pick: int) -> None:
        """The fetch force-updates the target's references to what it read (a
        write that landed on the target meanwhile is undone there), then the
        target is recorded at the generation read before copying."""
        if not self.copying:
            return
        copy = self.copying.pop(pick % len(self.copying))
        self.holds[copy.target] = set(copy.snapshot)
        try:
            self.run(
                self.repos.set_replica_generation(
                    VS, self.repository_id, copy.target, copy.generation
                )
            )
        except DowngradeAttempted:
            pass  # moved on meanwhile: recorded nothing

    @rule(healthy=st.sets(st.sampled_from(NODES)), avoid_current=st.booleans())
    def failover(self, healthy: set[str], avoid_current: bool) -> None:
        current = self.record()
        exclude = {current.primary} if avoid_current and current.primary else set()
        choice = choose_primary(current, frozenset(healthy), load={}, exclude=exclude)
        if choice is None or choice == current.primary:
            return
        try:
            self.run(
                self.repos.set_primary(VS, self.repository_id, choice, expected=current.primary)
            )
        except (Conflict, FailedPrecondition):
            pass

    @rule(node=st.sampled_from(NODES))
    def verifier_finds_behind(self, node: str) -> None:
        """The verifier marks a replica outdated; it settles by majority, so it
        never demotes the last up-to-date replica."""
        current = self.record()
        if up_to_date_replicas(current) - {node}:
            self.run(self.repos.mark_outdated(VS, self.repository_id, [node]))

    # -- what must always hold ---------------------------------------------------------------

    @invariant()
    def some_replica_is_up_to_date(self) -> None:
        if hasattr(self, "repository_id"):
            assert up_to_date_replicas(self.record()), self.record()

    @invariant()
    def up_to_date_replicas_hold_every_acknowledged_write(self) -> None:
        if not hasattr(self, "repository_id"):
            return
        current = self.record()
        for node in up_to_date_replicas(current):
            missing = self.acknowledged - self.holds[node]
            assert not missing, f"{node} recorded up to date without writes {sorted(missing)}"


WriteOutcomes.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_write_outcomes = WriteOutcomes.TestCase
