"""Unfinished writes: the evidence that lets the verifier settle what they leave.

A write may commit on some of its replicas and not on others, and its outcome
may never be recorded: its proxy dies or stops between the replicas' commit
and the finalizer, or the outcome cannot name who holds it (a late outcome
leaves replicas that moved on since the write started up to date). Two
replicas recorded up to date at one generation then differ by a write nobody
acknowledged. With no third up-to-date replica to make a majority, the
verifier could not tell that apart from a disk that lost acknowledged writes,
and would leave the repository for an operator.

So before the first COMMIT of a write that changes references goes out, its
proxy puts an *intent* (no lease: it outlives the proxy). The finalizer
removes it in the same txn as the outcome when the outcome accounts for every
replica, and marks it finished otherwise. An intent is *evidence* for the
verifier only once its write can no longer be finished by its own proxy: the
finalizer marked it, or that proxy incarnation is no longer a member (dead,
or paused past its lease). The verifier may then take one side of a mismatch
its participants explain (``decisions.settle_mismatch``) without an operator,
and removes the intent with its verdict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from gitquorum.cluster.election import FencingToken, fenced_txn
from gitquorum.cluster.errors import FailedPrecondition
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.store import Compare, KeyValue, Op, Store
from gitquorum.cluster.store_retry import StoreRetry, backoff


@dataclass(frozen=True, slots=True)
class WriteIntent:
    """A write that may have committed somewhere, as its proxy routed it."""

    virtual_storage: str
    repository_id: int
    intent_id: str  # unique per write (random)
    proxy: str
    # The writing proxy's membership ``started_at``: its incarnation. While a
    # member with this name and incarnation lives, the write may still be
    # finishing and its own finalizer will account for it.
    incarnation: float
    generation: int  # the repository's generation the write was routed at
    primary: str  # the write's primary: the reference its outcome rules keep
    participants: tuple[str, ...]
    # Put again by a finalizer whose outcome left replicas unaccounted for.
    finished: bool = False
    # The request's correlation id: ties the intent (and the verdict that
    # settles on it) to the write's log lines and to the client that sent it.
    correlation_id: str = ""
    # The record revision the write was routed from: a replica repaired at or
    # after it holds a copy of some replica's state, which this write explains.
    routed_revision: int = 0

    def encode(self) -> bytes:
        value: dict[str, object] = {
            "proxy": self.proxy,
            "incarnation": self.incarnation,
            "generation": self.generation,
            "primary": self.primary,
            "participants": list(self.participants),
        }
        if self.finished:
            value["finished"] = True
        if self.correlation_id:
            value["correlation_id"] = self.correlation_id
        if self.routed_revision:
            value["routed_revision"] = self.routed_revision
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class StoredIntent:
    """An intent as read back: its key, its revisions, and what it says."""

    key: str
    create_revision: int
    mod_revision: int
    primary: str
    generation: int
    proxy: str
    incarnation: float
    participants: frozenset[str]
    finished: bool
    correlation_id: str = ""
    routed_revision: int = 0

    def is_evidence(self, members: Mapping[str, float]) -> bool:
        """Whether its write is over: finished by its finalizer, or its proxy
        incarnation is gone (``members``: live proxy -> incarnation)."""
        return self.finished or members.get(self.proxy) != self.incarnation


def decode_intent(kv: KeyValue) -> StoredIntent | None:
    """The intent ``kv`` holds; None for a value this version cannot read."""
    try:
        data = json.loads(kv.value)
        return StoredIntent(
            kv.key,
            kv.create_revision,
            kv.mod_revision,
            str(data["primary"]),
            int(data["generation"]),
            str(data["proxy"]),
            float(data.get("incarnation", 0.0)),
            frozenset(str(n) for n in data["participants"]),
            bool(data.get("finished", False)),
            str(data.get("correlation_id", "")),
            int(data.get("routed_revision", 0)),
        )
    except (ValueError, KeyError, TypeError):
        return None


# How long a write's intent is retried while etcd is unavailable (its
# replicas wait in their hooks meanwhile, up to the nodes' vote timeout).
PUT_DEADLINE = 10.0


class IntentStore:
    def __init__(self, store: Store, keys: Keyspace, *, retry: StoreRetry | None = None) -> None:
        self.store = store
        self.keys = keys
        self.retry = retry or StoreRetry(deadline=PUT_DEADLINE, wait=backoff(0.1, 1.0))

    def key(self, intent: WriteIntent) -> str:
        return self.keys.intent(intent.virtual_storage, intent.repository_id, intent.intent_id)

    async def put(self, intent: WriteIntent) -> None:
        """Put ``intent`` while its repository exists (a write racing the
        repository's removal would leave an intent nobody ever removes).

        Retried while etcd is unavailable, up to ``PUT_DEADLINE``: the put is
        idempotent, and an etcd leader election (a member lost) times txns
        out for a second or two while the replicas wait in their hooks — the
        write goes on instead of failing (seen in the chaos tests)."""
        record = self.keys.repository(intent.virtual_storage, intent.repository_id)
        compares = [Compare.version(record, 0, ">")]
        ops = [Op.put(self.key(intent), intent.encode())]
        result = await self.retry(self.store.txn, compares, ops)
        if not result.succeeded:
            raise FailedPrecondition(f"repository {intent.repository_id} was removed")

    def keep_op(self, intent: WriteIntent) -> Op:
        """For an outcome's txn: the write is over but replicas it names were
        left up to date; put again (marked finished), even if the verifier
        removed it meanwhile: what the replicas hold changed since."""
        return Op.put(self.key(intent), replace(intent, finished=True).encode())

    async def finish_if_standing(self, intent: WriteIntent) -> bool:
        """Mark ``intent`` finished if it still stands (one that an outcome or
        the verifier removed meanwhile is not brought back). Whether it was."""
        key = self.key(intent)
        result = await self.store.txn(
            [Compare.version(key, 0, ">")], [Op.put(key, replace(intent, finished=True).encode())]
        )
        return result.succeeded

    def forget_op(self, intent: WriteIntent) -> Op:
        return Op.delete(self.key(intent))

    async def forget(self, intent: WriteIntent) -> None:
        await self.store.delete(self.key(intent))

    async def of_repository(self, virtual_storage: str, repository_id: int) -> list[StoredIntent]:
        """Its intents; one this version cannot read is left out (and never removed)."""
        result = await self.store.get_prefix(self.keys.intents(virtual_storage, repository_id))
        return [i for i in map(decode_intent, result.kvs) if i is not None]

    async def unchanged_guard(
        self, virtual_storage: str, repository_id: int, read: Sequence[StoredIntent]
    ) -> Compare | None:
        """A compare that holds while the repository's intents stay as they are
        now, or None when they already differ from ``read`` (a write put its
        intent since, or an outcome put one again finished). Only the intents
        this version reads count, as in ``of_repository``: one it cannot read
        must not void every verdict for good."""
        prefix = self.keys.intents(virtual_storage, repository_id)
        result = await self.store.get_prefix(prefix)
        now = {(i.key, i.mod_revision) for i in map(decode_intent, result.kvs) if i is not None}
        if now != {(i.key, i.mod_revision) for i in read}:
            return None
        return Compare.unchanged_since(prefix, result.revision)

    def forget_ops(self, intents: Sequence[StoredIntent]) -> tuple[Op, ...]:
        return tuple(Op.delete(i.key) for i in intents)

    async def forget_unchanged(self, intent: StoredIntent, fence: FencingToken) -> bool:
        """Remove ``intent`` (the leader's verifier, fenced) unless it was put
        again since it was read: that newer word stands."""
        result = await fenced_txn(
            self.store,
            fence,
            [Compare.mod_revision(intent.key, intent.mod_revision)],
            [Op.delete(intent.key)],
        )
        return result.succeeded
