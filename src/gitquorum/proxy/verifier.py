"""The verifier: the replicas recorded up to date must exist on disk and agree.

Run by the leader. Each pass takes the replicas verified longest ago (never
verified first) and checks their repositories: every healthy, up-to-date
replica of a repository is asked for ``RepositoryExists`` and
``CalculateChecksum``, and the answers are settled by majority
(``decisions.settle_mismatch``). The replicas recorded up to date should all
hold every acknowledged write, so they should agree; when they do not, the
majority decides which replicas lost data, whatever the primary says. Those are
demoted and repaired from a member of the majority (a primary among them loses
its role); without a majority nothing is demoted or repaired and the record
reports the conflict (``gitquorum dataloss``, an alert). When each replica was
verified is kept under ``verified/<virtual storage>/<repository id>/<node>``.

Two guards make a verdict safe to act on:

* **Fencing.** The record change (demotions, a new primary, the conflict mark)
  and its repair jobs are one txn carrying the leader's fencing token, taken
  before the checksums are read: a verifier whose proxy lost leadership
  meanwhile changes nothing.
* **No write in between.** A write's refs reach its replicas one by one during
  its commit phase, before its outcome is recorded; checksums read then differ
  without anything being wrong. The record change is conditional on the
  record's revision read *before* the first checksum, so any write whose
  outcome was recorded since then voids the verdict. A write still between its
  commit and its outcome when the verdict is written is caught by a second
  round: a mismatch is acted on only if every replica gives the same answer
  again ``recheck_delay`` later, and a write's replicas apply its refs within
  milliseconds of each other. See docs/failover.md for what is left.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import grpc

from gitquorum import log
from gitquorum.cluster.clock_rules import verification_due
from gitquorum.cluster.decisions import (
    Settlement,
    explaining_writes,
    primary_load,
    settle_mismatch,
    up_to_date_replicas,
    write_in_flight,
)
from gitquorum.cluster.election import FencingToken
from gitquorum.cluster.errors import Conflict, NotLeader
from gitquorum.cluster.history import VERDICT, History
from gitquorum.cluster.intents import IntentStore, StoredIntent
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.periodic import run_periodically, warn
from gitquorum.cluster.queue import ReplicationQueue
from gitquorum.cluster.repair_jobs import prepare_repairs
from gitquorum.cluster.repositories import (
    RepositoryCache,
    RepositoryRecord,
    RepositoryStore,
    TxnExtras,
)
from gitquorum.cluster.store import Compare, Op, Store
from gitquorum.gitaly import ref_pb2, ref_pb2_grpc, repository_pb2, repository_pb2_grpc, shared_pb2
from gitquorum.proxy.channels import NodeChannels

logger = log.get("gitquorum.verifier")

# node -> checksum (None: the replica does not exist); nodes that did not answer are absent.
Checksums = dict[str, str | None]


class ChecksumSource(Protocol):
    async def __call__(self, node: str, replica_path: str) -> str | None:
        """The replica's checksum; None when it does not exist. Raises
        ``grpc.aio.AioRpcError`` when the node cannot answer."""


class NodeChecksums:
    """Checksums asked from the storage nodes."""

    def __init__(self, channels: NodeChannels) -> None:
        self.channels = channels

    async def __call__(self, node: str, replica_path: str) -> str | None:
        stub = repository_pb2_grpc.RepositoryServiceStub(self.channels.channel(node))
        repo = shared_pb2.Repository(storage_name=node, relative_path=replica_path)
        metadata = self.channels.forward_metadata(())
        exists = await stub.RepositoryExists(
            repository_pb2.RepositoryExistsRequest(repository=repo), metadata=metadata, timeout=30
        )
        if not exists.exists:
            return None
        response = await stub.CalculateChecksum(
            repository_pb2.CalculateChecksumRequest(repository=repo), metadata=metadata, timeout=60
        )
        return str(response.checksum)


# How many differing references a verdict names (in its log line and history
# entry); ``differing_refs_count`` says how many there were.
DIFFERING_REFS_SHOWN = 20
# How long a verdict waits for its replicas' references before it is taken
# without them (they only explain it; the checksums decided it). Listed while
# the verifier waits ``recheck_delay`` between its two rounds.
REFS_TIMEOUT = 5.0

# node -> reference name -> object id; None: the replica does not exist.
References = dict[str, str] | None


class RefSource(Protocol):
    async def __call__(self, node: str, replica_path: str) -> References:
        """The replica's references; None when it does not exist. Raises
        ``grpc.aio.AioRpcError`` when the node cannot answer."""


class NodeRefs:
    """References listed by the storage nodes (``ListRefs``)."""

    def __init__(self, channels: NodeChannels) -> None:
        self.channels = channels

    async def __call__(self, node: str, replica_path: str) -> References:
        stub = ref_pb2_grpc.RefServiceStub(self.channels.channel(node))
        repo = shared_pb2.Repository(storage_name=node, relative_path=replica_path)
        refs: dict[str, str] = {}
        call = stub.ListRefs(
            ref_pb2.ListRefsRequest(repository=repo),
            metadata=self.channels.forward_metadata(()),
            timeout=REFS_TIMEOUT,
        )
        try:
            async for response in call:
                for ref in response.references:
                    refs[ref.name.decode("utf-8", "surrogateescape")] = ref.target
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return refs


@dataclass(frozen=True)
class Differing:
    """What the repairs of a verdict change: the references whose object
    differs between each demoted replica and its source (the first
    ``DIFFERING_REFS_SHOWN`` names, each with every compared replica's object
    id, "" where it is absent), and how many there are in all."""

    values: dict[str, dict[str, str]]
    count: int


def differing_references(target: References, source: References) -> list[str]:
    """The names whose object differs between two replicas (present on one
    side only included), sorted."""
    a, b = target or {}, source or {}
    return sorted(name for name in a.keys() | b.keys() if a.get(name) != b.get(name))


class VerificationStore:
    """When each replica was last verified, kept in etcd."""

    def __init__(self, store: Store, keys: Keyspace) -> None:
        self.store = store
        self.keys = keys

    async def record(self, virtual_storage: str, repository_id: int, node: str) -> None:
        await self.store.put(
            self.keys.verification(virtual_storage, repository_id, node),
            str(time.time()).encode(),
        )

    async def verified_at(self, virtual_storage: str, repository_id: int) -> dict[str, float]:
        prefix = self.keys.verifications(virtual_storage, repository_id)
        result = await self.store.range(prefix, prefix=True)
        return {self.keys.parse_verification(kv.key)[2]: float(kv.value) for kv in result.kvs}

    async def all(self) -> dict[tuple[str, int, str], float]:
        result = await self.store.get_prefix(self.keys.verifications())
        return {self.keys.parse_verification(kv.key): float(kv.value) for kv in result.kvs}

    async def clear(
        self, virtual_storage: str, repository_id: int | None = None, node: str | None = None
    ) -> int:
        """Forget verifications so the verifier checks those replicas first."""
        prefix = self.keys.verifications(virtual_storage, repository_id)
        result = await self.store.range(prefix, prefix=True)
        keys = [
            kv.key
            for kv in result.kvs
            if node is None or self.keys.parse_verification(kv.key)[2] == node
        ]
        for key in keys:
            await self.store.delete(key)
        return len(keys)


# How long an intent stands before the verifier may remove it once the
# replicas agree: longer than a node waits for a vote (60 s by default), so
# its write can no longer commit anywhere.
INTENT_GRACE = 120.0
# How long a repository whose check met a write in flight waits for the next.
IN_FLIGHT_DEFER = 10.0
MAX_SEEN_INTENTS = 10_000


class RecordMoved(Conflict):
    """The record changed since the checksums were read: their verdict is void."""


class Verifier:
    def __init__(
        self,
        repositories: RepositoryStore,
        cache: RepositoryCache,
        queue: ReplicationQueue,
        checksum: ChecksumSource,
        verification: VerificationStore,
        healthy: Callable[[str], frozenset[str]],
        *,
        fence: Callable[[], FencingToken],
        draining: Callable[[str], frozenset[str]] = lambda _vs: frozenset(),
        paused: Callable[[], bool] = lambda: False,
        interval: float = 300.0,
        batch: int = 25,
        tick: float = 2.0,
        recheck_delay: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        intents: IntentStore | None = None,
        intent_grace: float = INTENT_GRACE,
        members: Callable[[], Mapping[str, float]] = dict,
        on_verdict: Callable[[str, str], None] = lambda _vs, _verdict: None,
        refs: RefSource | None = None,
        history: History | None = None,
    ) -> None:
        self.repositories = repositories
        self.cache = cache
        self.queue = queue
        self.checksum = checksum
        self.verification = verification
        self.healthy = healthy
        # The leader's current token (raises NotLeader when this proxy does not lead).
        self.fence = fence
        self.draining = draining
        self.paused = paused
        self.interval = interval
        self.batch = batch
        self.tick = tick
        self.recheck_delay = recheck_delay
        self.sleep = sleep
        self.passes = 0
        self.intents = intents
        self.intent_grace = intent_grace
        # Live proxies and their incarnations: whose writes may still finish.
        self.members = members
        # (virtual storage, verdict) for each verdict stored: a metric.
        self.on_verdict = on_verdict
        # Which references a demoted replica differs by (for the record).
        self.refs = refs
        # Where each verdict is recorded, in the verdict's own txn.
        self.history = history
        # When this verifier first saw each standing intent (``_stood``).
        self._intents_seen: dict[str, float] = {}
        # Repositories skipped until then (monotonic) because a write was in flight.
        self._deferred: dict[int, float] = {}

    async def run(self) -> None:
        """Leader task: verify continuously until cancelled."""
        # Nothing was due (or the pass failed): rest longer before looking again.
        await run_periodically(
            self.verify_once,
            lambda checked: self.tick if checked else max(self.tick, 5.0),
            errors=(Exception,),
            on_error=warn(logger, "verification pass failed"),
        )

    def _due(
        self, verified: dict[tuple[str, int, str], float], now: float, force: bool
    ) -> list[tuple[RepositoryRecord, str]]:
        due: list[tuple[float, RepositoryRecord, str]] = []
        mono = time.monotonic()
        self._deferred = {rid: t for rid, t in self._deferred.items() if t > mono}
        for record in self.cache.records():
            if not force and record.repository_id in self._deferred:
                continue
            healthy = self.healthy(record.virtual_storage)
            for node in record.replica_nodes:
                if node not in healthy:
                    continue
                when = verified.get((record.virtual_storage, record.repository_id, node), 0.0)
                if force or verification_due(when, now, self.interval):
                    due.append((when, record, node))
        due.sort(key=lambda item: item[0])
        return [(record, node) for _, record, node in due]

    async def verify_once(self, *, force: bool = False, limit: int | None = None) -> int:
        """Verify up to ``limit`` (default: batch) due replicas, a repository at a
        time; returns how many replicas were due."""
        if self.paused():
            # An operator's maintenance window: the cluster does not act on its own.
            return 0
        verified = await self.verification.all()
        due = self._due(verified, time.time(), force)[: limit or self.batch]
        by_repository: dict[int, tuple[RepositoryRecord, list[str]]] = {}
        for record, node in due:
            by_repository.setdefault(record.repository_id, (record, []))[1].append(node)
        try:
            for record, nodes in by_repository.values():
                await self.verify_repository(record, nodes)
        except NotLeader as exc:
            # Deposed (the fence was refused, or the token is gone): a new
            # leader's verifier takes over; this one changes nothing more.
            logger.warning("verifier stopped: not the leader", extra=log.fields(error=str(exc)))
        self.passes += 1
        return len(due)

    async def _round(self, record: RepositoryRecord, nodes: Sequence[str]) -> Checksums:
        """Checksums of ``nodes``' replicas, read concurrently; a node that
        cannot answer now is left out (it decides nothing)."""

        async def one(node: str) -> str | None:
            return await self.checksum(node, record.replica_path)

        answers = await asyncio.gather(*(one(n) for n in nodes), return_exceptions=True)
        result: Checksums = {}
        for node, answer in zip(nodes, answers, strict=True):
            if isinstance(answer, grpc.aio.AioRpcError):
                logger.info(
                    "replica not verifiable now",
                    extra=log.fields(
                        node=node, repository_id=record.repository_id, error=answer.code().name
                    ),
                )
            elif isinstance(answer, BaseException):
                raise answer
            else:
                result[node] = answer
        return result

    def _settle(
        self, record: RepositoryRecord, checksums: Checksums, standing: Sequence[StoredIntent]
    ) -> Settlement:
        vs = record.virtual_storage
        return settle_mismatch(
            record,
            checksums,
            self.healthy(vs),
            load=primary_load(self.cache.records(vs)),
            draining=self.draining(vs),
            unfinished=explaining_writes(standing, frozenset(checksums), self.members(), record),
        )

    async def _standing(self, record: RepositoryRecord) -> list[StoredIntent]:
        """The repository's unfinished writes, read before its checksums: only
        those can explain what the checksums show.

        One this verifier has seen for ``intent_grace`` counts as over even if
        its proxy lives and never finished it (its finalizer could not reach
        etcd, or gave up): by then no node can still commit it (they wait at
        most their vote timeout), and a live proxy's lost intent must not keep
        the repository from being verified for good."""
        if self.intents is None:
            return []
        found = await self.intents.of_repository(record.virtual_storage, record.repository_id)
        now = time.monotonic()
        return [replace(i, finished=True) if self._stood(i, now) else i for i in found]

    def _stood(self, intent: StoredIntent, now: float) -> bool:
        """Whether this verifier has seen ``intent`` for ``intent_grace`` (its
        monotonic clock: a writer's wall clock may be skewed)."""
        return now - self._intents_seen.setdefault(intent.key, now) >= self.intent_grace

    async def _forget_finished(
        self, standing: Sequence[StoredIntent], agreed: bool, fence: FencingToken
    ) -> None:
        """Remove intents the replicas no longer differ by. A write still in
        flight may not have committed anywhere yet, so an intent goes only once
        every up-to-date replica agreed after it had stood ``intent_grace``
        (longer than a node waits for a vote): its write can change nothing
        any more, and its finalizer, had it lived, would have removed it."""
        if self.intents is None:
            return
        now = time.monotonic()
        for intent in standing:
            if self._stood(intent, now) and agreed:
                await self.intents.forget_unchanged(intent, fence)
                self._intents_seen.pop(intent.key, None)
        if len(self._intents_seen) > MAX_SEEN_INTENTS:
            # Intents removed by their finalizers are never seen again here.
            cutoff = now - 2 * self.intent_grace
            self._intents_seen = {k: t for k, t in self._intents_seen.items() if t >= cutoff}

    async def verify_repository(self, record: RepositoryRecord, due: Sequence[str]) -> bool:
        """Check ``record``'s up-to-date replicas and act on a verdict; records
        the ``due`` replicas as verified unless the verdict was void (a write
        landed meanwhile: they stay due). Returns whether they were recorded."""
        # Both taken before the first checksum: the verdict is only written
        # while this record revision and this leadership still hold.
        fence = self.fence()
        vs, rid = record.virtual_storage, record.repository_id
        healthy = self.healthy(vs)
        voters = sorted(up_to_date_replicas(record) & healthy)
        standing = await self._standing(record)
        first = await self._round(record, voters)
        settled = self._settle(record, first, standing)
        if (settled.demoted or settled.conflict) and write_in_flight(standing, self.members()):
            # Its outcome will say who holds it; a verdict now would demote a
            # replica its COMMIT has not reached yet, or mark a conflict. The
            # repository waits a while before its next check, so that it does
            # not hold the head of every pass.
            logger.info(
                "a write is in flight; checking again later",
                extra=log.fields(repository_id=rid),
            )
            self._deferred[rid] = time.monotonic() + IN_FLIGHT_DEFER
            return False
        differing = None
        if settled.changed and (settled.demoted or settled.conflict):
            # Which references the repairs would change, listed between the
            # two rounds (while the first waits): if the second round matches
            # the first, no write landed in between, so these are the
            # references the checksums covered.
            listing = asyncio.ensure_future(self._differing(record, settled))
            try:
                # Read again: a write between its commit and its outcome
                # changes the checksums of its replicas within milliseconds.
                await self.sleep(self.recheck_delay)
                differing = await listing
            finally:
                listing.cancel()
            second = await self._round(record, voters)
            if second != first:
                logger.info(
                    "replicas changed while being verified; checking again later",
                    extra=log.fields(repository_id=rid),
                )
                return False
        if settled.changed:
            try:
                missing = sorted(n for n, checksum in first.items() if checksum is None)
                await self._write(record, settled, fence, standing, missing, differing)
            except RecordMoved:
                logger.info(
                    "repository changed while being verified; checking again later",
                    extra=log.fields(repository_id=rid),
                )
                return False
        elif standing:
            everyone = set(first) == set(up_to_date_replicas(record))
            agreed = everyone and len(set(first.values())) == 1
            await self._forget_finished(standing, agreed, fence)
        for node in due:
            await self.verification.record(vs, rid, node)
        return True

    async def _differing(self, record: RepositoryRecord, settled: Settlement) -> Differing | None:
        """The references each demoted replica differs from its repair source
        by: what the repair will change, so what an unfinished write must
        explain. None when there is nothing to compare or a replica could not
        be listed within ``REFS_TIMEOUT`` (the verdict stands on its
        checksums either way)."""
        if self.refs is None or not settled.repairs:
            return None
        nodes = sorted({n for r in settled.repairs for n in (r.target, r.source)})
        refs = self.refs
        try:
            async with asyncio.timeout(REFS_TIMEOUT):
                listed = await asyncio.gather(
                    *(refs(n, record.replica_path) for n in nodes), return_exceptions=True
                )
        except TimeoutError as exc:
            listed = [exc] * len(nodes)
        by_node: dict[str, References] = {}
        for node, answer in zip(nodes, listed, strict=True):
            if isinstance(answer, BaseException):
                logger.info(
                    "references of a verdict not listed",
                    extra=log.fields(repository_id=record.repository_id, error=repr(answer)),
                )
                return None
            by_node[node] = answer
        names = sorted(
            {
                name
                for r in settled.repairs
                for name in differing_references(by_node[r.target], by_node[r.source])
            }
        )
        values = {
            name: {node: (by_node[node] or {}).get(name, "") for node in nodes}
            for name in names[:DIFFERING_REFS_SHOWN]
        }
        return Differing(values, len(names))

    async def _write(
        self,
        record: RepositoryRecord,
        settled: Settlement,
        fence: FencingToken,
        standing: Sequence[StoredIntent],
        missing: Sequence[str] = (),
        differing: Differing | None = None,
    ) -> None:
        """Store the settlement and its repairs in one txn, fenced with the
        leader's token and conditional on the record being the one read
        before the checksums. A verdict taken on unfinished writes removes
        their intents in the same txn: they are settled. The verdict's
        history entry goes in the same txn: it exists iff the verdict does,
        whatever happens to this proxy before its log line."""
        vs, rid = record.virtual_storage, record.repository_id
        settled_intents = (
            self.intents.forget_ops(standing)
            if self.intents is not None and settled.reference is not None
            else ()
        )
        verdict = verdict_of(settled)
        unfinished = self._explaining(settled, standing)
        details: dict[str, object] = {
            "demoted": sorted(settled.demoted),
            "majority": sorted(settled.majority),
            "reference": settled.reference,
            "conflict": list(settled.record.conflict) if settled.conflict else [],
            "missing_on_disk": list(missing),
            "unfinished_correlation_ids": sorted(
                i.correlation_id for i in unfinished if i.correlation_id
            ),
            "sources": {r.target: r.source for r in settled.repairs},
            # Unknown (None) when the replicas could not be listed in time.
            "differing_refs": sorted(differing.values) if differing is not None else None,
            "differing_refs_count": differing.count if differing is not None else None,
            "differing_values": differing.values if differing is not None else None,
        }
        history_ops: tuple[Op, ...] = ()
        if self.history is not None:
            entry = self.history.event(
                VERDICT, vs, rid, record.relative_path, record.primary, settled.record.primary,
                reason=verdict, details=details,
            )  # fmt: skip
            history_ops = (self.history.op(entry),)
            # The log line names its entry: one verdict, however far apart
            # their times (the line comes after the txn and its retries).
            details["history_entry"] = self.history.entry_of(history_ops[0])

        async def plan(current: RepositoryRecord) -> tuple[RepositoryRecord, TxnExtras]:
            if current.revision != record.revision:
                raise RecordMoved(
                    f"repository {rid} moved from revision {record.revision} to {current.revision}"
                )
            guard: tuple[Compare, ...] = ()
            if self.intents is not None:
                # The intents were read before the checksums. A write that put
                # its intent since (or an outcome that put one again finished,
                # leaving the record as it was) may be what the checksums
                # show, and it was not weighed: the verdict is void, and the
                # txn is refused if one lands before it.
                unchanged = await self.intents.unchanged_guard(vs, rid, standing)
                if unchanged is None:
                    raise RecordMoved(f"repository {rid}: its intents changed while verified")
                guard = (unchanged,)
            jobs = await prepare_repairs(self.queue, settled.record, settled.repairs)
            return settled.record, TxnExtras(
                (*jobs.compares, *guard), (*jobs.ops, *settled_intents, *history_ops)
            )

        await self.repositories.update_with(vs, rid, plan, fence=fence)
        self.on_verdict(vs, verdict)
        if self.history is not None:
            await self.history.written_in_txn()
        self._log_verdict(record, settled, details, unfinished)

    def _explaining(
        self, settled: Settlement, standing: Sequence[StoredIntent]
    ) -> list[StoredIntent]:
        """The unfinished writes a verdict names: every standing one for a
        verdict settled on them; for a majority verdict, those that are over
        without an outcome saying who holds them (their proxy gone before it
        finished them, or finished with the replicas it named outdated
        spared: a client that hung up mid-write) and that went to every
        demoted replica or to the whole majority: the replicas may differ by
        one of those rather than by a disk that lost writes."""
        if settled.reference is not None:
            return list(standing)
        if not settled.demoted:
            return []
        members = self.members()
        return [
            i
            for i in standing
            if i.is_evidence(members)
            and (settled.demoted <= i.participants or settled.majority <= i.participants)
        ]

    def _log_verdict(
        self,
        record: RepositoryRecord,
        settled: Settlement,
        details: Mapping[str, object],
        unfinished: Sequence[StoredIntent],
    ) -> None:
        rid = record.repository_id
        missing = details["missing_on_disk"]
        if settled.reference is not None:
            logger.warning(
                "replicas differing by an unfinished write settled",
                extra=log.fields(
                    repository_id=rid,
                    relative_path=record.relative_path,
                    reference=settled.reference,
                    demoted=sorted(settled.demoted),
                    # Demoted because their replica is gone from disk (not
                    # a state any write explains).
                    missing_on_disk=missing,
                    old_primary=record.primary,
                    new_primary=settled.record.primary,
                    unfinished_writes=len(unfinished),
                    unfinished_correlation_ids=details["unfinished_correlation_ids"],
                    sources=details["sources"],
                    differing_refs=details["differing_refs"],
                    differing_refs_count=details["differing_refs_count"],
                    differing_values=details["differing_values"],
                    history_entry=details.get("history_entry"),
                ),
            )
        elif settled.conflict:
            logger.error(
                "replicas disagree with no majority: nothing repaired, see gitquorum dataloss",
                extra=log.fields(
                    repository_id=rid,
                    relative_path=record.relative_path,
                    replicas=list(settled.record.conflict),
                    missing_on_disk=missing,
                ),
            )
        elif settled.demoted:
            # The unfinished writes named are for the record; the verdict is
            # the majority's either way.
            logger.warning(
                "verification failed: replicas differing from the majority demoted",
                extra=log.fields(
                    repository_id=rid,
                    relative_path=record.relative_path,
                    demoted=sorted(settled.demoted),
                    majority=sorted(settled.majority),
                    missing_on_disk=missing,
                    unfinished_writes=len(unfinished),
                    # Which writes: their requests' log lines, and the clients
                    # that were never told an outcome.
                    unfinished_correlation_ids=details["unfinished_correlation_ids"],
                    old_primary=record.primary,
                    new_primary=settled.record.primary,
                    sources=details["sources"],
                    # What the repair changes: what those writes must explain.
                    differing_refs=details["differing_refs"],
                    differing_refs_count=details["differing_refs_count"],
                    differing_values=details["differing_values"],
                    history_entry=details.get("history_entry"),
                ),
            )
        else:
            logger.info(
                "replicas agree again: conflict cleared",
                extra=log.fields(repository_id=rid, relative_path=record.relative_path),
            )


VERDICTS = ("majority", "unfinished-write", "conflict", "conflict-cleared")


def verdict_of(settled: Settlement) -> str:
    """The verdict's label in ``gitquorum_verifier_verdicts_total``."""
    if settled.reference is not None:
        return "unfinished-write"
    if settled.conflict:
        return "conflict"
    if settled.demoted:
        return "majority"
    return "conflict-cleared"


def nodes_of(nodes: dict[str, Sequence[str]]) -> list[tuple[str, str]]:
    return [(vs, n) for vs, members in nodes.items() for n in members]
