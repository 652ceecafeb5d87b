"""A repair whose source the verifier rules against while the copy runs.

A replication job picks its source when it starts (any up-to-date replica,
the job's preferred one first) and records the target, after the copy, at
the generation that source had. The verifier settles a mismatch without
moving the repository's generation: it demotes the minority to one below it,
or marks a conflict. So a copy that started from a replica the verifier then
finds in the minority (it lost acknowledged writes), or in a conflict, still
records its target at the repository's generation: the target is up to date
holding the copy of the losing side.

* Three replicas, the primary n1 lost its last writes, n3 outdated and being
  repaired from n1: the verifier finds n1 and n2 disagree with no majority and
  records the conflict ("while the conflict stands no replica is repaired").
  The copy then records n3 up to date with n1's rolled-back content, and the
  next check finds a majority (n1, n3) against n2, the one replica that kept
  every acknowledged write: n2 is demoted and repaired from n1. The loss is
  spread everywhere.
* Four replicas, the primary n1 lost its last writes and is demoted by the
  majority (n2, n3) while n4's repair copies from it: n4 is recorded up to
  date with n1's rolled-back content (reads may be served from it, and it
  can become primary).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import cast

import pytest

from gitquorum.cluster.clock import ManualClock
from gitquorum.cluster.decisions import up_to_date_replicas
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.queue import JobType, ReplicationQueue
from gitquorum.cluster.repositories import RepositoryCache, RepositoryStore
from gitquorum.gitaly import repository_pb2
from gitquorum.proxy.channels import NodeChannels
from gitquorum.proxy.replication import Replicator
from gitquorum.proxy.verifier import ChecksumSource, VerificationStore, Verifier
from tests.unit.proxy.finalizer_parts import KEYS
from tests.unit.proxy.test_replication_claims import FakeChannels
from tests.unit.proxy.test_verifier import FakeChecksums, Leadership

VS = "vs"


class CopyingNode:
    """The target's ReplicateRepository: runs ``during`` (the verifier's pass)
    while the copy is under way, then gives the target the source's checksum."""

    def __init__(self, checksums: FakeChecksums) -> None:
        self.checksums = checksums
        self.during: Callable[[], Awaitable[None]] | None = None
        self.copies: list[tuple[str, str]] = []

    async def replicate(
        self, request: repository_pb2.ReplicateRepositoryRequest, **_kwargs: object
    ) -> repository_pb2.ReplicateRepositoryResponse:
        source, target = request.source.storage_name, request.repository.storage_name
        # The fetch read the source's references before the verifier's verdict.
        copied = self.checksums.values[source]
        if self.during is not None:
            during, self.during = self.during, None
            await during()
        self.checksums.values[target] = copied
        self.copies.append((source, target))
        return repository_pb2.ReplicateRepositoryResponse()


class _Worker:
    def __init__(self, lease_id: int) -> None:
        self.lease_id = lease_id
        self.name = "p1/0"


async def _cluster(
    nodes: tuple[str, ...], outdated: str
) -> tuple[
    MemoryStore,
    RepositoryStore,
    RepositoryCache,
    ReplicationQueue,
    FakeChecksums,
    Verifier,
    Replicator,
    CopyingNode,
    int,
]:
    store = MemoryStore(ManualClock())
    repos = RepositoryStore(store, KEYS, rng=random.Random(1))
    record = await repos.create(VS, "a.git", nodes=nodes, healthy=set(nodes))
    rid = record.repository_id
    record = await repos.set_primary(VS, rid, "n1")
    # Generation 1 without ``outdated``: it missed a write and gets a repair from n1.
    record = await repos.increment_generation(VS, rid, [n for n in nodes if n != outdated])
    queue = ReplicationQueue(store, KEYS)
    await queue.enqueue(JobType.UPDATE, VS, rid, "a.git", outdated, source_node="n1")
    cache = RepositoryCache(store, KEYS)
    await cache.start()
    await asyncio.wait_for(cache.wait_for_revision(record.revision), 5)
    checksums = FakeChecksums(dict.fromkeys(nodes, "every acknowledged write"))
    checksums.values[outdated] = "behind"
    leadership = Leadership(store)
    await leadership.acquire("p1")
    healthy = frozenset(nodes)
    verifier = Verifier(
        repos,
        cache,
        queue,
        cast(ChecksumSource, checksums),
        VerificationStore(store, KEYS),
        lambda _vs: healthy,
        fence=leadership.current("p1"),
        recheck_delay=0.0,
    )
    node = CopyingNode(checksums)
    replicator = Replicator(
        repos, cache, cast(NodeChannels, FakeChannels(node)), lambda _vs: healthy
    )
    return store, repos, cache, queue, checksums, verifier, replicator, node, rid


async def _settled(repos: RepositoryStore, cache: RepositoryCache, rid: int) -> None:
    current = await repos.get(VS, rid)
    await asyncio.wait_for(cache.wait_for_revision(current.revision), 5)


async def test_a_repair_started_before_a_conflict_does_not_take_a_side() -> None:
    store, repos, cache, queue, checksums, verifier, replicator, node, rid = await _cluster(
        ("n1", "n2", "n3"), outdated="n3"
    )
    try:
        # The primary n1 came back from a power loss without its last writes.
        checksums.values["n1"] = "rolled back"

        async def verify() -> None:
            await _settled(repos, cache, rid)
            await verifier.verify_once(force=True)
            assert (await repos.get(VS, rid)).conflict == ("n1", "n2")

        node.during = verify
        lease = await store.grant(60)
        claim = await queue.claim_next(_Worker(lease.id))
        assert claim is not None
        async with asyncio.timeout(5):
            # The copy is not recorded, and no other source backs one while the
            # conflict stands: the job fails (and is retried later).
            with pytest.raises(RuntimeError, match="no healthy, up-to-date replica"):
                await replicator.run(claim)
        after = await repos.get(VS, rid)
        assert node.copies == [("n1", "n3")], "the interleaving was not replayed"
        # While the conflict stands nothing may be recorded up to date from one side.
        assert after.conflict == ("n1", "n2")
        assert "n3" not in up_to_date_replicas(after), (
            "n3 was recorded up to date with a copy of one side of a conflict"
        )
        # The consequence: the next check finds a 'majority' for the lost data.
        await _settled(repos, cache, rid)
        await verifier.verify_once(force=True)
        final = await repos.get(VS, rid)
        assert "n2" in up_to_date_replicas(final), (
            "n2, the only replica with every acknowledged write, was demoted "
            "and is repaired from the replica that lost them"
        )
    finally:
        await cache.close()


async def test_a_repair_from_a_source_the_majority_demoted_is_not_recorded() -> None:
    store, repos, cache, queue, checksums, verifier, replicator, node, rid = await _cluster(
        ("n1", "n2", "n3", "n4"), outdated="n4"
    )
    try:
        checksums.values["n1"] = "rolled back"

        async def verify() -> None:
            await _settled(repos, cache, rid)
            await verifier.verify_once(force=True)
            demoted = await repos.get(VS, rid)
            assert "n1" not in up_to_date_replicas(demoted) and demoted.primary != "n1"

        node.during = verify
        lease = await store.grant(60)
        claim = await queue.claim_next(_Worker(lease.id))
        assert claim is not None
        async with asyncio.timeout(5):
            await replicator.run(claim)
        after = await repos.get(VS, rid)
        assert node.copies[0] == ("n1", "n4"), "the interleaving was not replayed"
        # n1's copy was not recorded; the repair copied again from the majority.
        assert all(source in ("n2", "n3") for source, _ in node.copies[1:])
        assert "n4" in up_to_date_replicas(after)
        assert checksums.values["n4"] == "every acknowledged write", (
            "n4 recorded up to date with the content of a replica the verifier demoted"
        )
    finally:
        await cache.close()
