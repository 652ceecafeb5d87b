"""The store contract: the only way the cluster layer talks to etcd.

Two implementations keep the same semantics: :class:`~gitquorum.cluster.etcd_store.EtcdStore`
(production, integration tests) and :class:`~gitquorum.cluster.memory_store.MemoryStore`
(unit tests). Everything above this module is written against :class:`Store`.

Contract
========

Data model (etcd v3 MVCC). Keys are ``str`` (UTF-8), values ``bytes``. The store
has one global *revision*, a counter that grows by one for every request that
changes at least one key (a put, a delete that removed something, or a txn
whose executed branch wrote). Each key carries ``create_revision`` (revision of
the put that created it), ``mod_revision`` (revision of its last change),
``version`` (number of puts since creation) and ``lease`` (0 if none).

Atomicity. Each of these is atomic and linearizable:

* :meth:`Store.range` -- one consistent snapshot of a key or key range at one
  revision (``revision=0``: the latest). :meth:`Store.get_prefix` pages through a
  large prefix at a *pinned* revision, so the pages form one snapshot too.
* :meth:`Store.put`, :meth:`Store.delete` -- one key (or one range for delete).
* :meth:`Store.txn` -- compare-and-swap: all :class:`Compare` conditions are
  evaluated, then either every ``success`` op or every ``failure`` op runs, all
  at one revision, with nothing interleaved. Conditions can test a key's value,
  version, create_revision, mod_revision or lease, and a whole range (every key
  in the range must satisfy the condition). A missing key compares as version =
  create_revision = mod_revision = lease = 0; a value condition on a missing
  key is false. "Key absent" is therefore ``Compare.absent(key)``
  (create_revision == 0). This is the primitive for: leader acquisition
  (create-if-absent on a lease), generation bumps (mod_revision CAS), job claims
  (lock created if absent, attached to the worker's lease, in the same txn as
  the job's state change) and fencing (leader key create_revision == token).
* Leases: :meth:`Store.grant` returns a lease with a TTL; :meth:`Store.keep_alive`
  renews it for a full TTL; :meth:`Store.revoke` deletes it and, in one
  revision, every key attached to it. An expired lease behaves like a revoked
  one. A put with an unknown or expired lease fails with :class:`LeaseExpired`
  and writes nothing.

Watches. :meth:`Store.watch` yields :class:`WatchBatch` values in revision
order, starting at ``start_revision``: every change to the watched key or range
at or after it, each exactly once; a batch holds whole revisions (one or more).
Transient disconnections are hidden: the implementation resumes from the
revision after the last one it delivered, so no event is missed or repeated.
If the history needed to resume was compacted, the watch yields one batch
with ``compacted=True`` and ends: the consumer must read the current state
(a range) and watch again from after that read. Batches without events and
with ``compacted=False`` are progress notifications: everything up to
``revision`` has been delivered.

Errors. Every failure is a :class:`~gitquorum.cluster.errors.StoreUnavailable`
(or its subclasses :class:`LeaseExpired` and :class:`Compacted`). A failed read
can be retried freely. A failed write may or may not have been applied; callers
make writes idempotent or resolve the doubt by reading again (e.g. the leader
checks whether the leader key carries its own lease).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from gitquorum.cluster.errors import Compacted, LeaseExpired, StoreUnavailable

__all__ = [
    "Compacted",
    "Compare",
    "CompareOp",
    "CompareTarget",
    "EventType",
    "KeyValue",
    "Lease",
    "LeaseExpired",
    "Op",
    "OpKind",
    "RangeResult",
    "Store",
    "StoreUnavailable",
    "TxnResult",
    "WatchBatch",
    "WatchEvent",
    "prefix_end",
]


def encode_key(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def prefix_end(prefix: str) -> str:
    """The exclusive upper bound of all keys starting with ``prefix``.

    Works on the UTF-8 bytes like etcd does; the result is decoded with
    ``surrogateescape`` so it can be carried as ``str`` and encoded back exactly.
    """
    raw = bytearray(encode_key(prefix))
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return bytes(raw[: i + 1]).decode("utf-8", "surrogateescape")
    return "\x00"  # etcd's "all keys" marker


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True, slots=True)
class RangeResult:
    kvs: tuple[KeyValue, ...]
    # The store revision the snapshot was taken at.
    revision: int
    # True when ``limit`` cut the result short.
    more: bool = False


class CompareTarget(enum.Enum):
    VALUE = "value"
    VERSION = "version"
    CREATE = "create_revision"
    MOD = "mod_revision"
    LEASE = "lease"


class CompareOp(enum.Enum):
    EQUAL = "=="
    NOT_EQUAL = "!="
    LESS = "<"
    GREATER = ">"


@dataclass(frozen=True, slots=True)
class Compare:
    """One txn condition on a key (or on every key of ``[key, range_end)``)."""

    key: str
    target: CompareTarget
    op: CompareOp
    operand: bytes | int
    range_end: str | None = None

    @classmethod
    def _make(
        cls, key: str, target: CompareTarget, op: str, operand: bytes | int, prefix: bool
    ) -> Compare:
        return cls(key, target, CompareOp(op), operand, prefix_end(key) if prefix else None)

    @classmethod
    def value(cls, key: str, value: bytes, op: str = "==") -> Compare:
        return cls._make(key, CompareTarget.VALUE, op, value, False)

    @classmethod
    def version(cls, key: str, version: int, op: str = "==") -> Compare:
        return cls._make(key, CompareTarget.VERSION, op, version, False)

    @classmethod
    def create_revision(cls, key: str, revision: int, op: str = "==") -> Compare:
        return cls._make(key, CompareTarget.CREATE, op, revision, False)

    @classmethod
    def mod_revision(
        cls, key: str, revision: int, op: str = "==", *, prefix: bool = False
    ) -> Compare:
        return cls._make(key, CompareTarget.MOD, op, revision, prefix)

    @classmethod
    def lease(cls, key: str, lease_id: int, op: str = "==") -> Compare:
        return cls._make(key, CompareTarget.LEASE, op, lease_id, False)

    @classmethod
    def absent(cls, key: str) -> Compare:
        return cls.create_revision(key, 0)

    @classmethod
    def unchanged_since(cls, prefix: str, revision: int) -> Compare:
        """No key under ``prefix`` was created or changed after ``revision``."""
        return cls.mod_revision(prefix, revision + 1, "<", prefix=True)

    def holds(self, kv: KeyValue | None) -> bool:
        """Evaluate against one key (None: missing), with etcd's rules."""
        if kv is None:
            if self.target is CompareTarget.VALUE:
                return False
            actual: object = 0
        else:
            actual = {
                CompareTarget.VALUE: kv.value,
                CompareTarget.VERSION: kv.version,
                CompareTarget.CREATE: kv.create_revision,
                CompareTarget.MOD: kv.mod_revision,
                CompareTarget.LEASE: kv.lease,
            }[self.target]
        operand: object = self.operand
        if self.op is CompareOp.EQUAL:
            return actual == operand
        if self.op is CompareOp.NOT_EQUAL:
            return actual != operand
        if self.op is CompareOp.LESS:
            return actual < operand  # type: ignore[operator]
        return actual > operand  # type: ignore[operator]


class OpKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"
    GET = "get"


@dataclass(frozen=True, slots=True)
class Op:
    """One operation inside a txn branch."""

    kind: OpKind
    key: str
    value: bytes = b""
    lease: int = 0
    range_end: str | None = None

    @classmethod
    def put(cls, key: str, value: bytes, *, lease: int = 0) -> Op:
        return cls(OpKind.PUT, key, value, lease)

    @classmethod
    def delete(cls, key: str, *, prefix: bool = False) -> Op:
        return cls(OpKind.DELETE, key, range_end=prefix_end(key) if prefix else None)

    @classmethod
    def get(cls, key: str, *, prefix: bool = False) -> Op:
        return cls(OpKind.GET, key, range_end=prefix_end(key) if prefix else None)


@dataclass(frozen=True, slots=True)
class TxnResult:
    succeeded: bool
    # Revision after the txn (the revision of its writes if it wrote).
    revision: int
    # One entry per executed op: a RangeResult for a get, the number of keys
    # removed for a delete, the txn revision for a put.
    responses: tuple[RangeResult | int, ...] = ()

    def range(self, index: int) -> RangeResult:
        response = self.responses[index]
        if not isinstance(response, RangeResult):
            raise TypeError(f"txn response {index} is not a range")
        return response


class EventType(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: EventType
    # For a delete: the key, an empty value and mod_revision = the deletion revision.
    kv: KeyValue


@dataclass(frozen=True, slots=True)
class WatchBatch:
    events: tuple[WatchEvent, ...]
    # Everything up to this revision has been delivered: the last event's
    # revision (for compacted batches: the compaction revision).
    revision: int
    compacted: bool = False


@dataclass(frozen=True, slots=True)
class Lease:
    id: int
    ttl: float


class Store(abc.ABC):
    """Async key-value store with revisions, CAS transactions, leases and watches."""

    @abc.abstractmethod
    async def range(
        self,
        key: str,
        *,
        prefix: bool = False,
        range_end: str | None = None,
        revision: int = 0,
        limit: int = 0,
    ) -> RangeResult:
        """Keys ``key`` (or ``[key, range_end)``, or the prefix) sorted by key."""

    async def get(self, key: str) -> KeyValue | None:
        result = await self.range(key)
        return result.kvs[0] if result.kvs else None

    async def get_prefix(self, prefix: str, *, page_size: int = 1000) -> RangeResult:
        """Every key under ``prefix`` as one snapshot, read page by page.

        Pages keep messages under gRPC's size limit; pinning the revision of
        the first page makes all pages one consistent snapshot.
        """
        end = prefix_end(prefix)
        first = await self.range(prefix, range_end=end, limit=page_size)
        kvs = list(first.kvs)
        more = first.more
        while more:
            start = kvs[-1].key + "\x00"
            page = await self.range(start, range_end=end, revision=first.revision, limit=page_size)
            kvs.extend(page.kvs)
            more = page.more
        return RangeResult(tuple(kvs), first.revision)

    @abc.abstractmethod
    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write a key; returns the new revision."""

    @abc.abstractmethod
    async def delete(self, key: str, *, prefix: bool = False) -> int:
        """Remove a key (or prefix); returns how many keys were removed."""

    @abc.abstractmethod
    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        """Atomic compare-and-swap (see the module contract)."""

    @abc.abstractmethod
    async def grant(self, ttl: float) -> Lease:
        """A new lease; etcd rounds the TTL up to whole seconds (and its minimum)."""

    @abc.abstractmethod
    async def keep_alive(self, lease_id: int) -> float:
        """Renew the lease for a full TTL; returns the TTL. Raises LeaseExpired."""

    @abc.abstractmethod
    async def revoke(self, lease_id: int) -> None:
        """Delete the lease and its keys; an unknown lease is not an error."""

    @abc.abstractmethod
    async def time_to_live(self, lease_id: int) -> float:
        """Seconds left on the lease, or -1 if it does not exist."""

    @abc.abstractmethod
    def watch(
        self, key: str, *, prefix: bool = False, start_revision: int
    ) -> AsyncIterator[WatchBatch]:
        """Changes from ``start_revision`` on (0: from the next change), see the
        module contract."""

    @abc.abstractmethod
    async def compact(self, revision: int) -> None:
        """Drop history before ``revision`` (watches and reads older fail)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; pending watches end."""
