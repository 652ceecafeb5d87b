"""Repository records: ids, placement, primaries and generations, in etcd.

One compact JSON value per repository at ``repositories/<vs>/<id>``::

    {"path":"@hashed/ab/cd/x.git","primary":"n1","assigned":["n1","n2","n3"],
     "generation":7,"replicas":{"n1":7,"n2":7,"n3":6}}

plus a path index ``paths/<vs>/<relative path>`` -> decimal id that makes
"relative path already taken" a create-if-absent compare. Virtual storage and
id come from the key, the replica path is derived from the id, so a record value
is typically 150-250 bytes, most of it the relative path.

Every change is a compare-and-swap on the record's ``mod_revision`` inside one
txn (plus the leader's fence when the caller passes one), retried with a fresh
read when another writer won: no update is ever lost and generations only move
the way the operation allows. Decisions over records (valid primaries,
failover, repairs) are pure functions in ``decisions``; reports over many
records (dataloss, lag) in ``reports``.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace

from tenacity import wait_incrementing

from gitquorum.cluster.cas import RETRY, Retry, compare_and_swap, conflict, jittered_backoff
from gitquorum.cluster.clock import Clock
from gitquorum.cluster.election import FencingToken, fenced_txn
from gitquorum.cluster.errors import (
    ClaimLost,
    Compacted,
    Conflict,
    DowngradeAttempted,
    FailedPrecondition,
    InvalidArgument,
    InvalidReplicationFactor,
    LeaseExpired,
    NoHealthyNode,
    RepositoryExists,
    RepositoryNotFound,
    SourceRuledOut,
    StoreUnavailable,
    WriteToOutdatedReplicas,
)
from gitquorum.cluster.keys import Keyspace, check_name, replica_path
from gitquorum.cluster.mirror import PrefixMirror
from gitquorum.cluster.store import (
    Compare,
    EventType,
    KeyValue,
    Op,
    OpKind,
    Store,
    TxnResult,
    WatchEvent,
)
from gitquorum.cluster.store_retry import StoreRetry, backoff

# A replica that does not exist has generation -1 (as in Praefect).
MISSING = -1
# The longest a catch-up may hold a repository's writes; proxies never wait
# longer than this for one hold, whatever its deadline says (clocks differ).
HOLD_CAP = 2.0
# How long the record is re-read to settle a txn whose answer was lost.
READ_BACK_DEADLINE = 10.0
# How many of a record's past versions are read to find the change that
# followed a txn whose answer was lost (each is one read; a busy repository
# makes a few changes a second).
READ_BACK_VERSIONS = 50
# Attempts of a record update after a txn that timed out without applying,
# and the waits before them (0.1 s, 0.2 s, 0.3 s).
UNAVAILABLE_RETRIES = 3
UNAVAILABLE_WAIT = wait_incrementing(start=0.1, increment=0.1)


class TxnNotApplied(StoreUnavailable):
    """A txn's answer was lost, and a later read showed the record unchanged.

    Not applied as of that read (etcd may still commit a proposal of a
    timed-out request after it, in principle). Retrying is safe all the same:
    the retry re-reads the record and re-applies its change to what it finds,
    conditional on that revision, so the worst case is the same update applied
    to a record that already had it (a generation bumped for the same replicas
    again), never a replica recorded up to date without the write."""


@dataclass(frozen=True, slots=True)
class RepositoryRecord:
    repository_id: int
    virtual_storage: str
    relative_path: str
    primary: str | None
    assigned: tuple[str, ...]
    generation: int
    # (node, generation) of every existing replica, sorted by node.
    replicas: tuple[tuple[str, int], ...]
    # mod_revision of the record in the store (0: not stored yet).
    revision: int = 0
    # (node, revision) of replicas a repair recorded: the record revision the
    # repair's update compared against. A write routed from a record revision
    # not above it may have been overwritten on that replica by the repair's
    # copy (``decisions.record_outcome``), sorted by node.
    repaired: tuple[tuple[str, int], ...] = ()
    # A catch-up in progress: new writes of the repository wait (bounded) while
    # ``hold_for`` takes its last copy; ``hold_until`` is a wall-clock deadline.
    hold_for: str | None = None
    hold_until: float = 0.0
    # Up-to-date replicas the verifier found different with no majority among
    # them (empty: none). Nothing is repaired from them until a later check
    # finds a majority or an operator makes one replica authoritative.
    conflict: tuple[str, ...] = ()

    @property
    def replica_path(self) -> str:
        return replica_path(self.repository_id)

    def replica_generation(self, node: str) -> int:
        for name, generation in self.replicas:
            if name == node:
                return generation
        return MISSING

    @property
    def replica_nodes(self) -> tuple[str, ...]:
        return tuple(node for node, _ in self.replicas)

    def is_assigned(self, node: str) -> bool:
        # No assignments means "every node of the virtual storage".
        return not self.assigned or node in self.assigned

    def repaired_at(self, node: str) -> int:
        """The record revision the last repair of ``node`` compared against (-1: none)."""
        for name, revision in self.repaired:
            if name == node:
                return revision
        return -1

    def with_replicas(self, replicas: Mapping[str, int], **changes: object) -> RepositoryRecord:
        ordered = tuple(sorted((sys.intern(n), g) for n, g in replicas.items() if g > MISSING))
        kept = {n for n, _ in ordered}
        repaired = changes.pop("repaired", self.repaired)
        marks = tuple(m for m in repaired if m[0] in kept)  # type: ignore[attr-defined]
        return replace(self, replicas=ordered, repaired=marks, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class CopySource:
    """The replica a repair copies from, as the record showed it before the copy."""

    node: str
    generation: int
    repaired_at: int

    @classmethod
    def of(cls, record: RepositoryRecord, node: str) -> CopySource:
        return cls(node, record.replica_generation(node), record.repaired_at(node))

    def ruled_out(self, record: RepositoryRecord) -> str:
        """Why ``record`` no longer backs a copy taken from this source ("" if it does)."""
        if record.conflict:
            return "is in a verifier conflict"
        if record.replica_generation(self.node) != record.generation:
            # Demoted (also to a generation at or above the one the copy read,
            # once writes moved the repository on), or behind a write it missed:
            # either way the record no longer vouches for what was copied.
            return "is no longer up to date"
        if record.repaired_at(self.node) != self.repaired_at:
            return "was repaired anew"
        return ""


def encode_record(record: RepositoryRecord) -> bytes:
    value: dict[str, object] = {
        "path": record.relative_path,
        "primary": record.primary,
        "assigned": list(record.assigned),
        "generation": record.generation,
        "replicas": dict(record.replicas),
    }
    # Written only when set: most records never carry them.
    if record.repaired:
        value["repaired"] = dict(record.repaired)
    if record.hold_for is not None:
        value["hold"] = {"node": record.hold_for, "until": record.hold_until}
    if record.conflict:
        # Only when set: records without a conflict keep their usual value.
        value["conflict"] = list(record.conflict)
    return json.dumps(value, separators=(",", ":")).encode()


# Decoding is on the cache's warm path (every record once): skip json.loads'
# encoding detection and re-sorting replicas that encode_record wrote sorted.
_decode_json = json.JSONDecoder().decode


def decode_record(
    virtual_storage: str, repository_id: int, value: bytes, revision: int = 0
) -> RepositoryRecord:
    data = _decode_json(value.decode())
    intern = sys.intern
    primary = data.get("primary")
    replicas = tuple((intern(n), int(g)) for n, g in data.get("replicas", {}).items())
    if any(replicas[i][0] >= replicas[i + 1][0] for i in range(len(replicas) - 1)):
        replicas = tuple(sorted(replicas))
    repaired = data.get("repaired")
    hold = data.get("hold")
    return RepositoryRecord(
        repository_id,
        intern(virtual_storage),
        data["path"],
        intern(primary) if primary else None,
        tuple(intern(n) for n in data.get("assigned", ())),
        int(data.get("generation", 0)),
        replicas,
        revision,
        tuple(sorted((intern(n), int(r)) for n, r in repaired.items())) if repaired else (),
        intern(hold["node"]) if hold else None,
        float(hold["until"]) if hold else 0.0,
        tuple(intern(n) for n in data.get("conflict", ())),
    )


# -- placement of a new repository --------------------------------------------------
# Kept next to ``RepositoryStore.plan_creation``, its only user: the other pure
# rules live in ``decisions``, which builds on the record defined here.


def place_replicas(
    nodes: Sequence[str],
    healthy: AbstractSet[str],
    replication_factor: int = 0,
    rng: random.Random | None = None,
) -> tuple[str, tuple[str, ...]]:
    """(primary, assigned) for a new repository.

    The primary is a random healthy node; the secondaries are a random choice
    among the other configured nodes (healthy or not: unhealthy ones get a
    replication job). ``replication_factor`` 0 assigns every node.
    """
    rng = rng or random.Random()
    if replication_factor < 0 or replication_factor > len(nodes):
        raise InvalidReplicationFactor(
            f"replication factor {replication_factor} not in 0..{len(nodes)}"
        )
    candidates = [n for n in nodes if n in healthy]
    if not candidates:
        raise NoHealthyNode("no healthy node to create the repository on")
    primary = rng.choice(candidates)
    others = [n for n in nodes if n != primary]
    rng.shuffle(others)
    count = (replication_factor or len(nodes)) - 1
    return primary, (primary, *others[:count])


# -- stored operations -----------------------------------------------------------------


@dataclass(frozen=True)
class CreationPlan:
    """Where a new repository goes; known before the replicas are created on disk."""

    virtual_storage: str
    relative_path: str
    repository_id: int
    primary: str
    assigned: tuple[str, ...]

    @property
    def replica_path(self) -> str:
        return replica_path(self.repository_id)


Mutation = Callable[[RepositoryRecord], RepositoryRecord]


@dataclass(frozen=True)
class TxnExtras:
    """Compares and ops that go into a record change's txn (``update_with``)."""

    compares: tuple[Compare, ...] = ()
    ops: tuple[Op, ...] = ()


NO_EXTRAS = TxnExtras()
# The record as read -> (the record to store, what else its txn carries).
Planner = Callable[[RepositoryRecord], Awaitable[tuple[RepositoryRecord, TxnExtras]]]


class ExtrasUncertain(StoreUnavailable):
    """A txn that changed no record, only carried extras, lost its answer,
    and a read after it found the record at the revision the plan read.

    The record needed no change and none landed since, so nothing about it is
    in doubt; only the extras (e.g. repair jobs) may or may not have been
    applied. (A record that changed meanwhile is planned again instead.)"""

    def __init__(self, message: str, record: RepositoryRecord) -> None:
        super().__init__(message)
        self.record = record


class RepositoryStore:
    """Atomic operations on repository records (each one CAS txn, retried on races)."""

    def __init__(
        self,
        store: Store,
        keys: Keyspace,
        *,
        rng: random.Random | None = None,
        max_attempts: int = 200,
    ) -> None:
        self.store = store
        self.keys = keys
        self.rng = rng or random.Random()
        self.max_attempts = max_attempts
        # Between lost races: jitter spreads racing writers so one of them wins each round.
        self._backoff = jittered_backoff(self.rng)
        self._read_back_retry = StoreRetry(deadline=READ_BACK_DEADLINE, wait=backoff(0.1, 1.0))

    async def _txn(
        self,
        fence: FencingToken | None,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        if fence is not None:
            return await fenced_txn(self.store, fence, compares, success, failure)
        return await self.store.txn(compares, success, failure)

    # -- ids and creation --------------------------------------------------------

    async def reserve_ids(self, count: int = 1) -> int:
        """Reserve ``count`` consecutive repository ids; returns the first.

        A counter key bumped by CAS: ids are unique and never reused; gaps
        (an id reserved but never created) are allowed.
        """
        key = self.keys.repository_id_counter()

        async def attempt(_number: int) -> int | Retry:
            kv = await self.store.get(key)
            last = int(kv.value) if kv is not None else 0
            guard = (
                Compare.mod_revision(key, kv.mod_revision)
                if kv is not None
                else Compare.absent(key)
            )
            result = await self.store.txn([guard], [Op.put(key, str(last + count).encode())])
            return last + 1 if result.succeeded else RETRY

        return await compare_and_swap(
            attempt,
            attempts=self.max_attempts,
            give_up=conflict("could not reserve a repository id"),
            backoff=self._backoff,
        )

    async def plan_creation(
        self,
        virtual_storage: str,
        relative_path: str,
        *,
        nodes: Sequence[str],
        healthy: AbstractSet[str],
        replication_factor: int = 0,
    ) -> CreationPlan:
        """Reserve an id and place replicas; nothing is recorded for the path yet."""
        check_name("virtual storage", virtual_storage)
        if not relative_path:
            raise InvalidArgument("empty relative path")
        if await self.store.get(self.keys.path(virtual_storage, relative_path)) is not None:
            raise RepositoryExists(f"repository {virtual_storage}/{relative_path} already exists")
        primary, assigned = place_replicas(nodes, healthy, replication_factor, self.rng)
        repository_id = await self.reserve_ids()
        return CreationPlan(virtual_storage, relative_path, repository_id, primary, assigned)

    async def commit_creation(
        self, plan: CreationPlan, created_on: Collection[str] | None = None
    ) -> RepositoryRecord:
        """Record the repository once its replicas exist on ``created_on`` (default:
        every assigned node); those start at generation 0, the rest are missing."""
        created = plan.assigned if created_on is None else tuple(created_on)
        record = RepositoryRecord(
            plan.repository_id,
            plan.virtual_storage,
            plan.relative_path,
            plan.primary,
            plan.assigned,
            0,
            (),
        ).with_replicas(dict.fromkeys(created, 0))
        path_key = self.keys.path(plan.virtual_storage, plan.relative_path)
        record_key = self.keys.repository(plan.virtual_storage, plan.repository_id)
        id_value = str(plan.repository_id).encode()
        try:
            result = await self.store.txn(
                [Compare.absent(path_key), Compare.absent(record_key)],
                [Op.put(record_key, encode_record(record)), Op.put(path_key, id_value)],
            )
        except StoreUnavailable:
            # Unknown outcome: it went through iff the path now names our id.
            kv = await self.store.get(path_key)
            if kv is None or kv.value != id_value:
                raise
            return await self.get(plan.virtual_storage, plan.repository_id)
        if not result.succeeded:
            raise RepositoryExists(
                f"repository {plan.virtual_storage}/{plan.relative_path} already exists"
            )
        return replace(record, revision=result.revision)

    async def create(
        self,
        virtual_storage: str,
        relative_path: str,
        *,
        nodes: Sequence[str],
        healthy: AbstractSet[str],
        replication_factor: int = 0,
        created_on: Collection[str] | None = None,
    ) -> RepositoryRecord:
        plan = await self.plan_creation(
            virtual_storage,
            relative_path,
            nodes=nodes,
            healthy=healthy,
            replication_factor=replication_factor,
        )
        return await self.commit_creation(plan, created_on)

    # -- reads ---------------------------------------------------------------------

    async def get(self, virtual_storage: str, repository_id: int) -> RepositoryRecord:
        kv = await self.store.get(self.keys.repository(virtual_storage, repository_id))
        if kv is None:
            raise RepositoryNotFound(f"repository {virtual_storage}/{repository_id} not found")
        return decode_record(virtual_storage, repository_id, kv.value, kv.mod_revision)

    async def find(self, virtual_storage: str, relative_path: str) -> RepositoryRecord | None:
        kv = await self.store.get(self.keys.path(virtual_storage, relative_path))
        if kv is None:
            return None
        try:
            record = await self.get(virtual_storage, int(kv.value))
        except RepositoryNotFound:
            return None
        return record if record.relative_path == relative_path else None

    async def get_by_path(self, virtual_storage: str, relative_path: str) -> RepositoryRecord:
        record = await self.find(virtual_storage, relative_path)
        if record is None:
            raise RepositoryNotFound(f"repository {virtual_storage}/{relative_path} not found")
        return record

    async def list(self, virtual_storage: str | None = None) -> list[RepositoryRecord]:
        result = await self.store.get_prefix(self.keys.repositories(virtual_storage))
        records = []
        for kv in result.kvs:
            vs, rid = self.keys.parse_repository(kv.key)
            records.append(decode_record(vs, rid, kv.value, kv.mod_revision))
        return records

    # -- updates ----------------------------------------------------------------------

    async def update(
        self,
        virtual_storage: str,
        repository_id: int,
        mutate: Mutation,
        *,
        fence: FencingToken | None = None,
    ) -> RepositoryRecord:
        """Apply ``mutate`` to the current record by CAS, re-reading on every race.

        ``mutate`` is pure and may raise to refuse the change; returning the
        record unchanged writes nothing.
        """

        async def plan(record: RepositoryRecord) -> tuple[RepositoryRecord, TxnExtras]:
            return mutate(record), NO_EXTRAS

        return await self.update_with(virtual_storage, repository_id, plan, fence=fence)

    async def update_with(
        self,
        virtual_storage: str,
        repository_id: int,
        plan: Planner,
        *,
        fence: FencingToken | None = None,
    ) -> RepositoryRecord:
        """Like :meth:`update`, with more in the same txn: ``plan`` returns the new
        record and the extra compares and ops (e.g. the repair jobs the change
        needs), all applied in one txn conditional on the revision read, or not
        at all. A lost race re-reads and plans again.

        When the record does not change, the extras alone are applied (still
        conditional on the revision read). If that txn's answer is lost, the
        record is read again: changed since the plan's read, the round is
        planned again on it; unchanged, :class:`ExtrasUncertain` says so with
        the record as read.
        """
        # A txn that timed out is tried again only when the record provably did
        # not change (TxnNotApplied): an etcd leader election (a member lost)
        # times txns out while reads already work, and a write's finalizer then
        # records the write instead of failing it (seen in the chaos tests).
        policy = StoreRetry(
            attempts=UNAVAILABLE_RETRIES + 1,
            wait=UNAVAILABLE_WAIT,
            retry_on=lambda exc: isinstance(exc, TxnNotApplied),
        )
        return await policy(
            compare_and_swap,
            lambda _number: self._update_once(virtual_storage, repository_id, plan, fence),
            attempts=self.max_attempts,
            give_up=conflict(
                f"repository {virtual_storage}/{repository_id}: too many concurrent updates"
            ),
            backoff=self._backoff,
        )

    async def _update_once(
        self,
        virtual_storage: str,
        repository_id: int,
        plan: Planner,
        fence: FencingToken | None,
    ) -> RepositoryRecord | Retry:
        """One read-plan-CAS round; RETRY when another writer won."""
        key = self.keys.repository(virtual_storage, repository_id)
        current = await self.get(virtual_storage, repository_id)
        new, extras = await plan(current)
        value = encode_record(new)
        guard = [Compare.mod_revision(key, current.revision), *extras.compares]
        if value == encode_record(current):
            if not extras.ops:
                return current
            try:
                result = await self._txn(fence, guard, extras.ops)
            except (LeaseExpired, Compacted):
                raise
            except StoreUnavailable as exc:
                # Unknown outcome, but this txn changes no record. If the record
                # moved since the read, another change (a repair, an outcome, a
                # failover) landed before our txn, which then failed on its
                # compare, or after it: either way the plan was taken on a record
                # that is gone and must be taken again on the new one. Planning
                # again is safe: jobs that did land are pending, and the next
                # plan leaves them out. A failed read raises: nothing is known.
                kv = await self._read_back(key)
                if kv is None or kv.mod_revision != current.revision:
                    return RETRY
                raise ExtrasUncertain(str(exc), current) from exc
            return current if result.succeeded else RETRY
        try:
            result = await self._txn(fence, guard, [Op.put(key, value), *extras.ops])
        except (LeaseExpired, Compacted):
            raise
        except StoreUnavailable as exc:
            # Unknown outcome. The txn compares the record's revision with the
            # one read, so it can only have applied as the record's first
            # change after that read: the change that followed the read says
            # whether it did, even when other changes landed since (a busy
            # repository's other writes, recorded while etcd elected a leader;
            # seen in the chaos tests: one etcd member lost, an acknowledged
            # write reported "outcome unknown").
            kv = await self._read_back(key)
            if kv is not None and kv.mod_revision == current.revision:
                raise TxnNotApplied(str(exc)) from exc
            first = await self._change_after(key, current.revision, kv)
            if first is None:
                raise
            ours = first.value == value and await self._wrote_extras(extras.ops, first.mod_revision)
            if ours is None:
                raise
            if ours:
                return replace(new, revision=first.mod_revision)
            # Another change came first and our txn failed its compare: plan
            # again on the record as it is now, as after any lost race.
            return RETRY
        if result.succeeded:
            return replace(new, revision=result.revision)
        return RETRY

    async def _read_back(self, key: str) -> KeyValue | None:
        """The record after a txn whose answer was lost, read as soon as etcd
        answers again (up to ``READ_BACK_DEADLINE``): an etcd leader election
        times the txn out and the first reads too, and a write's finalizer
        must learn whether its outcome was recorded rather than tell the
        client "outcome unknown" (seen in the chaos tests, one etcd member lost)."""
        return await self._read_back_retry(self.store.get, key)

    async def _change_after(
        self, key: str, revision: int, latest: KeyValue | None
    ) -> KeyValue | None:
        """The first version of ``key`` written after ``revision``, found by
        reading back from ``latest``; None when that cannot be known (the key
        was deleted in between, the history was compacted, or it is longer
        than ``READ_BACK_VERSIONS``)."""
        kv = latest
        for _ in range(READ_BACK_VERSIONS):
            if kv is None:
                return None
            try:
                older = await self._read_back_retry(self._get_at, key, kv.mod_revision - 1)
            except StoreUnavailable:
                return None
            if older is not None and older.mod_revision <= revision:
                return kv
            kv = older
        return None

    async def _wrote_extras(self, ops: Sequence[Op], revision: int) -> bool | None:
        """Whether the txn that wrote the record at ``revision`` was the one
        carrying ``ops``; None when they cannot tell.

        Two writers can compute the same record from the same read (two
        writes routed at one generation that reached the same replicas): the
        value alone does not say whose txn applied, and taking the other's
        for ours would leave our extras (a write's intent removal, its repair
        jobs, a verdict's history entry) undone. Every op of a txn is written
        at the txn's revision: one of our puts at that revision, or one of our
        deletes of a key that existed just before it, is proof. Without
        extras there is nothing to leave undone: equal values are enough."""
        if not ops:
            return True
        for op in ops:
            if op.range_end is not None:
                continue
            try:
                if op.kind is OpKind.PUT:
                    kv = await self._read_back_retry(self._get_at, op.key, revision)
                    return kv is not None and kv.mod_revision == revision
                if op.kind is OpKind.DELETE:
                    before = await self._read_back_retry(self._get_at, op.key, revision - 1)
                    if before is None:
                        continue  # already gone: its delete proves nothing
                    after = await self._read_back_retry(self._get_at, op.key, revision)
                    return after is None
            except StoreUnavailable:
                return None
        return None

    async def _get_at(self, key: str, revision: int) -> KeyValue | None:
        result = await self.store.range(key, revision=revision)
        return result.kvs[0] if result.kvs else None

    async def increment_generation(
        self,
        virtual_storage: str,
        repository_id: int,
        nodes: Collection[str],
        *,
        fence: FencingToken | None = None,
    ) -> RepositoryRecord:
        """After a write: move the repository and those of ``nodes`` that were up to
        date to the next generation. Nodes that were behind stay behind (they
        missed an earlier write); if none of ``nodes`` was up to date the write
        went only to outdated replicas and is refused."""

        def bump(record: RepositoryRecord) -> RepositoryRecord:
            current = [n for n in nodes if record.replica_generation(n) == record.generation]
            if not current:
                raise WriteToOutdatedReplicas(
                    f"repository {record.repository_id}: none of {sorted(nodes)} is at "
                    f"generation {record.generation}"
                )
            new_generation = record.generation + 1
            replicas = dict(record.replicas)
            for node in current:
                replicas[node] = new_generation
            return record.with_replicas(replicas, generation=new_generation)

        return await self.update(virtual_storage, repository_id, bump, fence=fence)

    async def _claimed_update(
        self,
        virtual_storage: str,
        repository_id: int,
        mutate: Mutation,
        claim: Sequence[Compare],
        what: str,
    ) -> RepositoryRecord:
        """:meth:`update` in one txn with ``claim`` (``ClaimedJob.guard``): a
        replication job's change to the record applies only while its claim is
        held. When the claim is gone, :class:`ClaimLost` and nothing changes."""
        guard = tuple(claim)
        attempts = 0

        async def plan(record: RepositoryRecord) -> tuple[RepositoryRecord, TxnExtras]:
            nonlocal attempts
            attempts += 1
            # A txn failed: a concurrent record change, or the claim is gone.
            # Only the latter ends the update (one read, on retries only).
            if guard and attempts > 1 and not (await self.store.txn(guard, [])).succeeded:
                raise ClaimLost(
                    f"repository {virtual_storage}/{repository_id}: the replication claim "
                    f"is no longer held; {what} not recorded"
                )
            return mutate(record), TxnExtras(compares=guard)

        return await self.update_with(virtual_storage, repository_id, plan)

    async def set_replica_generation(
        self,
        virtual_storage: str,
        repository_id: int,
        node: str,
        generation: int,
        *,
        read_revision: int | None = None,
        source: CopySource | None = None,
        claim: Sequence[Compare] = (),
    ) -> RepositoryRecord:
        """After replicating to ``node`` from a source that was at ``generation``
        (read before replicating). Refuses to move a replica backwards or sideways.

        The replica is marked repaired at the revision this update compares
        against: writes routed from that revision or earlier may have landed on
        the replica while the copy overwrote its references, so their outcomes
        do not count it as holding them (``decisions.record_outcome``).

        With ``read_revision`` the update applies only if the record is still at
        that revision (:class:`Conflict` otherwise): no write outcome landed since
        the copy's generation was read. A catch-up hold ``node`` owns is released
        in the same update.

        With ``source`` (the replica copied from, as read before the copy) the
        update applies only if that source is still what it was then: up to
        date (never demoted since, as it cannot come back without a repair),
        not repaired since (the same repair mark), and no verifier conflict
        stands (:class:`SourceRuledOut` otherwise). A verdict against the
        source during the copy must not make the copy of the losing side count
        as up to date.

        ``claim``: compares saying the replication job's claim is still held
        (``ClaimedJob.guard``), checked in the same txn as the record change.
        When they fail, :class:`ClaimLost` is raised and nothing is recorded:
        the job was taken over (its worker's lease expired) and its new holder
        records the outcome of its own copy."""

        def set_generation(record: RepositoryRecord) -> RepositoryRecord:
            if read_revision is not None and record.revision != read_revision:
                raise Conflict(
                    f"repository {record.repository_id} changed since the copy started "
                    f"(revision {read_revision} -> {record.revision})"
                )
            if source is not None:
                ruled_out = source.ruled_out(record)
                if ruled_out:
                    raise SourceRuledOut(
                        f"repository {record.repository_id}: source {source.node} {ruled_out} "
                        "since the copy started"
                    )
            if generation > record.generation:
                raise InvalidArgument(
                    f"generation {generation} is ahead of the repository's {record.generation}"
                )
            current = record.replica_generation(node)
            if current >= generation:
                raise DowngradeAttempted(
                    f"replica on {node} is at generation {current}, not moving to {generation}"
                )
            replicas = dict(record.replicas)
            replicas[node] = generation
            marks = dict(record.repaired)
            marks[node] = record.revision
            hold: dict[str, object] = {}
            if record.hold_for == node:
                hold = {"hold_for": None, "hold_until": 0.0}
            return record.with_replicas(replicas, repaired=tuple(sorted(marks.items())), **hold)

        return await self._claimed_update(
            virtual_storage, repository_id, set_generation, claim, f"generation {generation}"
        )

    async def hold_writes(
        self,
        virtual_storage: str,
        repository_id: int,
        node: str,
        now: float,
        duration: float,
        *,
        claim: Sequence[Compare] = (),
    ) -> RepositoryRecord:
        """Ask every proxy to hold new writes of the repository for ``duration``
        (wall clock from ``now``) while ``node`` takes its last copy. Refused
        (Conflict) while another replica's catch-up holds them; DowngradeAttempted
        when ``node`` is up to date; ClaimLost when ``claim`` is no longer held."""
        until = now + min(duration, HOLD_CAP)

        def hold(record: RepositoryRecord) -> RepositoryRecord:
            if record.hold_for not in (None, node) and record.hold_until > now:
                raise Conflict(f"writes of repository {repository_id} held for {record.hold_for}")
            if record.replica_generation(node) == record.generation:
                raise DowngradeAttempted(f"replica on {node} is already up to date")
            return replace(record, hold_for=node, hold_until=until)

        return await self._claimed_update(virtual_storage, repository_id, hold, claim, "hold")

    async def release_writes(
        self,
        virtual_storage: str,
        repository_id: int,
        node: str,
        *,
        claim: Sequence[Compare] = (),
    ) -> RepositoryRecord:
        """End ``node``'s catch-up hold (nothing if it holds none); only while
        ``claim`` is held, so that a worker that lost its job cannot end the
        hold the job's new holder set (ClaimLost)."""

        def release(record: RepositoryRecord) -> RepositoryRecord:
            if record.hold_for != node:
                return record
            return replace(record, hold_for=None, hold_until=0.0)

        return await self._claimed_update(
            virtual_storage, repository_id, release, claim, "release of the hold"
        )

    async def set_primary(
        self,
        virtual_storage: str,
        repository_id: int,
        node: str,
        *,
        expected: str | None = None,
        fence: FencingToken | None = None,
    ) -> RepositoryRecord:
        """Make ``node`` primary. With ``expected``, only if the primary is still that
        node (failover must not undo a concurrent decision). ``node`` must hold an
        assigned, up-to-date replica; health is the caller's (consensus) decision."""

        def elect(record: RepositoryRecord) -> RepositoryRecord:
            if record.primary == node:
                return record
            if expected is not None and record.primary != expected:
                raise Conflict(
                    f"repository {record.repository_id}: primary is {record.primary}, "
                    f"not {expected}"
                )
            if not record.is_assigned(node) or record.replica_generation(node) != record.generation:
                raise FailedPrecondition(
                    f"{node} is not an assigned, up-to-date replica of {record.repository_id}"
                )
            return replace(record, primary=node)

        return await self.update(virtual_storage, repository_id, elect, fence=fence)

    async def set_replication_factor(
        self,
        virtual_storage: str,
        repository_id: int,
        replication_factor: int,
        *,
        nodes: Sequence[str],
        fence: FencingToken | None = None,
    ) -> RepositoryRecord:
        """Assign or unassign random nodes to reach the factor; the primary stays."""
        if not 1 <= replication_factor <= len(nodes):
            raise InvalidReplicationFactor(
                f"replication factor {replication_factor} not in 1..{len(nodes)}"
            )
        rng = self.rng

        def resize(record: RepositoryRecord) -> RepositoryRecord:
            configured = set(nodes)
            assigned = [n for n in record.assigned if n in configured]
            if record.primary is not None and record.primary in configured:
                assigned = [record.primary, *(n for n in assigned if n != record.primary)]
            if len(assigned) < replication_factor:
                spare = [n for n in nodes if n not in assigned]
                rng.shuffle(spare)
                assigned.extend(spare[: replication_factor - len(assigned)])
            elif len(assigned) > replication_factor:
                keep = assigned[:1] if assigned and assigned[0] == record.primary else []
                rest = [n for n in assigned if n not in keep]
                rng.shuffle(rest)
                assigned = keep + rest[: replication_factor - len(keep)]
            ordered = tuple(sorted(assigned, key=lambda n: (n != record.primary, n)))
            return replace(record, assigned=ordered)

        return await self.update(virtual_storage, repository_id, resize, fence=fence)

    async def mark_outdated(
        self,
        virtual_storage: str,
        repository_id: int,
        nodes: Collection[str],
        *,
        fence: FencingToken | None = None,
    ) -> RepositoryRecord:
        """Stop counting ``nodes`` as up to date (e.g. a write is known to have
        missed them). Their generation drops to one below the repository's, so
        replication brings them back; at generation 0 the replica counts as missing."""

        def demote(record: RepositoryRecord) -> RepositoryRecord:
            replicas = dict(record.replicas)
            for node in nodes:
                if replicas.get(node, MISSING) >= record.generation:
                    replicas[node] = record.generation - 1
            return record.with_replicas(replicas)

        return await self.update(virtual_storage, repository_id, demote, fence=fence)

    async def set_authoritative(
        self,
        virtual_storage: str,
        repository_id: int,
        node: str,
        *,
        fence: FencingToken | None = None,
    ) -> RepositoryRecord:
        """Accept data loss: ``node``'s replica becomes the only up-to-date one (the
        repository moves to a new generation with it) and the primary. The
        reconciler then replicates it to the other assigned nodes. A conflict
        the verifier reported is settled by this choice and cleared."""

        def authorize(record: RepositoryRecord) -> RepositoryRecord:
            if not record.is_assigned(node):
                raise FailedPrecondition(f"{node} is not assigned to {record.repository_id}")
            if record.replica_generation(node) == MISSING:
                raise FailedPrecondition(f"{node} holds no replica of {record.repository_id}")
            new_generation = record.generation + 1
            replicas = dict(record.replicas)
            replicas[node] = new_generation
            return record.with_replicas(
                replicas, generation=new_generation, primary=node, conflict=()
            )

        return await self.update(virtual_storage, repository_id, authorize, fence=fence)

    async def remove_replica(
        self,
        virtual_storage: str,
        repository_id: int,
        node: str,
        *,
        fence: FencingToken | None = None,
    ) -> RepositoryRecord:
        """Forget the replica on ``node`` (after a delete_replica job removed it)."""

        def forget(record: RepositoryRecord) -> RepositoryRecord:
            if record.primary == node:
                raise FailedPrecondition(f"{node} is the primary of {record.repository_id}")
            replicas = dict(record.replicas)
            replicas.pop(node, None)
            return record.with_replicas(replicas)

        return await self.update(virtual_storage, repository_id, forget, fence=fence)

    async def rename(
        self,
        virtual_storage: str,
        repository_id: int,
        new_path: str,
        *,
        fence: FencingToken | None = None,
    ) -> RepositoryRecord:
        """Move a repository to another relative path (metadata only: the replica
        path is derived from the id and does not change)."""
        new_key = self.keys.path(virtual_storage, new_path)
        key = self.keys.repository(virtual_storage, repository_id)

        async def attempt(_number: int) -> RepositoryRecord | Retry:
            current = await self.get(virtual_storage, repository_id)
            if current.relative_path == new_path:
                return current
            new = replace(current, relative_path=new_path)
            old_key = self.keys.path(virtual_storage, current.relative_path)
            result = await self._txn(
                fence,
                [Compare.mod_revision(key, current.revision), Compare.absent(new_key)],
                [
                    Op.delete(old_key),
                    Op.put(new_key, str(repository_id).encode()),
                    Op.put(key, encode_record(new)),
                ],
                [Op.get(new_key)],
            )
            if result.succeeded:
                return replace(new, revision=result.revision)
            if result.range(0).kvs:
                raise RepositoryExists(f"repository {virtual_storage}/{new_path} already exists")
            return RETRY

        return await compare_and_swap(
            attempt,
            attempts=self.max_attempts,
            give_up=conflict(
                f"repository {virtual_storage}/{repository_id}: too many concurrent updates"
            ),
            backoff=self._backoff,
        )

    async def delete(
        self,
        virtual_storage: str,
        repository_id: int,
        *,
        fence: FencingToken | None = None,
    ) -> RepositoryRecord:
        """Remove the record, its path entry and its unfinished writes' intents
        (removing replicas from disk is the caller's)."""
        key = self.keys.repository(virtual_storage, repository_id)
        intents = self.keys.intents(virtual_storage, repository_id)

        async def attempt(_number: int) -> RepositoryRecord | Retry:
            current = await self.get(virtual_storage, repository_id)
            path_key = self.keys.path(virtual_storage, current.relative_path)
            result = await self._txn(
                fence,
                [Compare.mod_revision(key, current.revision)],
                [Op.delete(key), Op.delete(path_key), Op.delete(intents, prefix=True)],
            )
            return current if result.succeeded else RETRY

        return await compare_and_swap(
            attempt,
            attempts=self.max_attempts,
            give_up=conflict(
                f"repository {virtual_storage}/{repository_id}: too many concurrent updates"
            ),
            backoff=self._backoff,
        )


# -- watch-fed cache ------------------------------------------------------------------

RecordListener = Callable[[RepositoryRecord | None, RepositoryRecord | None], None]


class RepositoryCache:
    """Every repository record, kept current by the watch: O(1) lookups by
    (virtual storage, relative path) and by id, no etcd round trip per request."""

    # Records per read while warming (about 250 bytes each on the wire).
    DEFAULT_PAGE_SIZE = 2000

    def __init__(
        self,
        store: Store,
        keys: Keyspace,
        *,
        page_size: int = DEFAULT_PAGE_SIZE,
        clock: Clock | None = None,
    ) -> None:
        self.keys = keys
        self._by_id: dict[int, RepositoryRecord] = {}
        self._by_path: dict[str, dict[str, RepositoryRecord]] = {}
        self._listeners: list[RecordListener] = []
        # Set (and replaced) after every change the watch applies, while anyone waits.
        self._changed = asyncio.Event()
        self._waiting = 0
        self._mirror = PrefixMirror(
            store,
            keys.repositories(),
            reset=self._reset,
            apply=self._apply,
            page_size=page_size,
            clock=clock,
        )

    async def start(self) -> None:
        """Warm from one consistent (paged) read, then follow the watch."""
        await self._mirror.start()

    async def close(self) -> None:
        await self._mirror.close()

    @property
    def revision(self) -> int:
        return self._mirror.revision

    @property
    def last_sync(self) -> float:
        """Monotonic time the cache last heard from etcd (a load, a watch event
        or a progress notification): the stale-read check and the state-age
        gauge measure from it."""
        return self._mirror.last_sync

    @property
    def resyncs(self) -> int:
        return self._mirror.resyncs

    async def wait_for_revision(self, revision: int) -> None:
        """Wait until a repository write at ``revision`` is visible (read-your-writes)."""
        await self._mirror.wait_for_revision(revision)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition()`` holds, looking again after every change the
        watch applies (e.g. until a deleted record is forgotten). Unbounded: the
        caller sets the deadline."""
        self._waiting += 1
        try:
            while not condition():
                await self._changed.wait()
        finally:
            self._waiting -= 1

    def _signal_change(self) -> None:
        if self._waiting:
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def add_listener(self, callback: RecordListener) -> None:
        """``callback(old, new)`` per changed record (None for created/deleted)."""
        self._listeners.append(callback)

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, virtual_storage: str, relative_path: str) -> RepositoryRecord | None:
        paths = self._by_path.get(virtual_storage)
        return paths.get(relative_path) if paths is not None else None

    def get_by_id(self, repository_id: int) -> RepositoryRecord | None:
        return self._by_id.get(repository_id)

    def records(self, virtual_storage: str | None = None) -> tuple[RepositoryRecord, ...]:
        """An immutable snapshot for the pure query functions."""
        if virtual_storage is None:
            return tuple(self._by_id.values())
        return tuple(self._by_path.get(virtual_storage, {}).values())

    def _notify(self, old: RepositoryRecord | None, new: RepositoryRecord | None) -> None:
        for callback in self._listeners:
            callback(old, new)

    def _put(self, record: RepositoryRecord) -> RepositoryRecord | None:
        old = self._by_id.get(record.repository_id)
        if old is not None and old.relative_path != record.relative_path:
            self._unindex(old)
        self._by_id[record.repository_id] = record
        self._by_path.setdefault(record.virtual_storage, {})[record.relative_path] = record
        return old

    def _unindex(self, record: RepositoryRecord) -> None:
        paths = self._by_path.get(record.virtual_storage)
        if paths is not None and paths.get(record.relative_path) is record:
            del paths[record.relative_path]

    def _reset(self, kvs: Sequence[KeyValue], _revision: int) -> None:
        previous = self._by_id
        self._by_id = {}
        self._by_path = {}
        for kv in kvs:
            vs, rid = self.keys.parse_repository(kv.key)
            self._put(decode_record(vs, rid, kv.value, kv.mod_revision))
        if self._listeners:
            for rid, record in self._by_id.items():
                old = previous.get(rid)
                if old is None or old.revision != record.revision:
                    self._notify(old, record)
            for rid, old in previous.items():
                if rid not in self._by_id:
                    self._notify(old, None)
        self._signal_change()

    def _apply(self, events: Sequence[WatchEvent], _revision: int) -> None:
        for event in events:
            vs, rid = self.keys.parse_repository(event.kv.key)
            if event.type is EventType.DELETE:
                old = self._by_id.pop(rid, None)
                if old is not None:
                    self._unindex(old)
                    self._notify(old, None)
                continue
            record = decode_record(vs, rid, event.kv.value, event.kv.mod_revision)
            self._notify(self._put(record), record)
        self._signal_change()
