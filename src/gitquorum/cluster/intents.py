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
replica, and leaves it otherwise. While one stands, every up-to-date replica
still holds every acknowledged write (the outcome rules guarantee it), and a
difference between them can be that write: the verifier may then take one
side (``decisions.settle_mismatch``) without an operator, and removes the
intent with its verdict.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.store import Compare, KeyValue, Op, Store


@dataclass(frozen=True, slots=True)
class WriteIntent:
    """A write that may have committed somewhere, as its proxy routed it."""

    virtual_storage: str
    repository_id: int
    intent_id: str  # unique per write (random)
    proxy: str
    generation: int  # the repository's generation the write was routed at
    primary: str  # the write's primary: the reference its outcome rules keep
    participants: tuple[str, ...]

    def encode(self) -> bytes:
        return json.dumps(
            {
                "proxy": self.proxy,
                "generation": self.generation,
                "primary": self.primary,
                "participants": list(self.participants),
            },
            sort_keys=True,
        ).encode()


@dataclass(frozen=True, slots=True)
class StoredIntent:
    """An intent as read back: its key, when it was put, and what it says."""

    key: str
    create_revision: int
    mod_revision: int
    primary: str
    generation: int
    proxy: str


def decode_intent(kv: KeyValue) -> StoredIntent | None:
    """The intent ``kv`` holds; None for a value this version cannot read (it
    is still an unfinished write: the caller counts it, with no primary)."""
    try:
        data = json.loads(kv.value)
        return StoredIntent(
            kv.key,
            kv.create_revision,
            kv.mod_revision,
            str(data["primary"]),
            int(data["generation"]),
            str(data["proxy"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


class IntentStore:
    def __init__(self, store: Store, keys: Keyspace) -> None:
        self.store = store
        self.keys = keys

    def key(self, intent: WriteIntent) -> str:
        return self.keys.intent(intent.virtual_storage, intent.repository_id, intent.intent_id)

    async def put(self, intent: WriteIntent) -> None:
        await self.store.put(self.key(intent), intent.encode())

    def keep_op(self, intent: WriteIntent) -> Op:
        """Put again in an outcome's txn: the verifier may have removed it meanwhile."""
        return Op.put(self.key(intent), intent.encode())

    def forget_op(self, intent: WriteIntent) -> Op:
        return Op.delete(self.key(intent))

    async def forget(self, intent: WriteIntent) -> None:
        await self.store.delete(self.key(intent))

    async def of_repository(self, virtual_storage: str, repository_id: int) -> list[StoredIntent]:
        result = await self.store.get_prefix(self.keys.intents(virtual_storage, repository_id))
        found = []
        for kv in result.kvs:
            intent = decode_intent(kv)
            found.append(
                intent or StoredIntent(kv.key, kv.create_revision, kv.mod_revision, "", 0, "")
            )
        return found

    def forget_ops(self, intents: Sequence[StoredIntent]) -> tuple[Op, ...]:
        return tuple(Op.delete(i.key) for i in intents)

    async def forget_unchanged(self, intent: StoredIntent) -> bool:
        """Remove ``intent`` unless it was put again since it was read (an
        outcome that keeps it puts it again: that newer word stands)."""
        result = await self.store.txn(
            [Compare.mod_revision(intent.key, intent.mod_revision)], [Op.delete(intent.key)]
        )
        return result.succeeded

    def forget_repository_op(self, virtual_storage: str, repository_id: int) -> Op:
        return Op.delete(self.keys.intents(virtual_storage, repository_id), prefix=True)
