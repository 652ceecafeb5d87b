"""In-memory :class:`~gitquorum.cluster.store.Store` with etcd's semantics, for unit tests.

Revisions, create/mod revisions and versions, range compares, leases that
expire on a (possibly manual) clock, watches from any retained revision,
compaction, plus fault injection: :meth:`MemoryStore.set_available` makes every
call fail like an unreachable etcd, :meth:`MemoryStore.fail_after_apply` makes
the next writes succeed and still raise (the ambiguous outcome real clients see).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from gitquorum.cluster.clock import REAL_CLOCK, Clock, ManualClock
from gitquorum.cluster.errors import Compacted, LeaseExpired, StoreUnavailable
from gitquorum.cluster.store import (
    Compare,
    EventType,
    KeyValue,
    Lease,
    Op,
    OpKind,
    RangeResult,
    Store,
    TxnResult,
    WatchBatch,
    WatchEvent,
    encode_key,
    prefix_end,
)

# etcd refuses a txn whose compares, success ops or failure ops number more
# than ``--max-txn-ops`` (default 128): each of the three lists is counted on
# its own, not their sum (``checkTxnRequest`` in etcd's v3rpc). The error is
# INVALID_ARGUMENT, which the etcd store reports as StoreUnavailable like every
# other etcd error; so does this store, so unit tests meet the limit too.
MAX_TXN_OPS = 128


@dataclass
class _LeaseState:
    ttl: float
    expiry: float
    keys: set[bytes] = field(default_factory=set)


class MemoryStore(Store):
    def __init__(
        self,
        clock: Clock | None = None,
        *,
        interleave: random.Random | None = None,
        max_txn_ops: int = MAX_TXN_OPS,
    ) -> None:
        """``interleave``: every call first yields to the event loop 0-2 times (drawn
        from this generator) so concurrent tasks interleave like remote calls do.
        ``max_txn_ops``: etcd's ``--max-txn-ops``, see :data:`MAX_TXN_OPS`."""
        self._clock: Clock = clock or REAL_CLOCK
        self.max_txn_ops = max_txn_ops
        self._interleave = interleave
        self._watches_paused = False
        self._kvs: dict[bytes, KeyValue] = {}
        self._sorted: list[bytes] = []
        self._revision = 1
        self._compacted = 0
        self._history: list[tuple[int, tuple[WatchEvent, ...]]] = []
        self._leases: dict[int, _LeaseState] = {}
        self._lease_ids = itertools.count(0x6A1E0001)
        self._watchers: set[asyncio.Event] = set()
        self._available = True
        self._fail_after_apply = 0
        self._closed = False
        self._reaper: asyncio.Task[None] | None = None
        self.calls = 0
        if isinstance(self._clock, ManualClock):
            self._clock.add_listener(lambda _now: self._expire())

    # -- fault injection ------------------------------------------------------

    def set_available(self, available: bool) -> None:
        """While unavailable every call raises StoreUnavailable and watches stall."""
        self._available = available
        if available:
            self._expire()
            self._wake()

    def pause_watches(self, paused: bool) -> None:
        """Hold back watch deliveries (writes continue), e.g. to let history be compacted."""
        self._watches_paused = paused
        if not paused:
            self._wake()

    def fail_after_apply(self, count: int = 1) -> None:
        """The next ``count`` writes are applied but report StoreUnavailable."""
        self._fail_after_apply = count

    @property
    def revision(self) -> int:
        return self._revision

    def dump(self, prefix: str = "") -> dict[str, bytes]:
        """Current keys and values (for assertions)."""
        return {kv.key: kv.value for kv in self._kvs.values() if kv.key.startswith(prefix)}

    # -- internals ------------------------------------------------------------

    async def _enter(self) -> None:
        if self._interleave is not None:
            for _ in range(self._interleave.randint(0, 2)):
                await asyncio.sleep(0)
        self._check()

    def _check(self) -> None:
        self.calls += 1
        if self._closed:
            raise StoreUnavailable("store closed")
        if not self._available:
            raise StoreUnavailable("store unavailable (injected)")
        self._expire()

    def _after_write(self) -> None:
        if self._fail_after_apply > 0:
            self._fail_after_apply -= 1
            raise StoreUnavailable("write applied but the answer was lost (injected)")

    def _keys_in(self, key: bytes, end: bytes | None) -> list[bytes]:
        if end is None:
            return [key] if key in self._kvs else []
        lo = bisect.bisect_left(self._sorted, key)
        if end == b"\x00":
            return self._sorted[lo:]
        hi = bisect.bisect_left(self._sorted, end)
        return self._sorted[lo:hi]

    def _wake(self) -> None:
        for event in self._watchers:
            event.set()

    def _commit(self, events: list[WatchEvent]) -> None:
        if events:
            self._history.append((self._revision, tuple(events)))
            self._wake()

    def _apply_put(self, key: str, value: bytes, lease: int, rev: int) -> WatchEvent:
        raw = encode_key(key)
        old = self._kvs.get(raw)
        if old is None:
            kv = KeyValue(key, value, rev, rev, 1, lease)
            bisect.insort(self._sorted, raw)
        else:
            if old.lease and old.lease != lease and old.lease in self._leases:
                self._leases[old.lease].keys.discard(raw)
            kv = KeyValue(key, value, old.create_revision, rev, old.version + 1, lease)
        self._kvs[raw] = kv
        if lease:
            self._leases[lease].keys.add(raw)
        return WatchEvent(EventType.PUT, kv)

    def _apply_delete(self, raw: bytes, rev: int) -> WatchEvent:
        old = self._kvs.pop(raw)
        del self._sorted[bisect.bisect_left(self._sorted, raw)]
        if old.lease and old.lease in self._leases:
            self._leases[old.lease].keys.discard(raw)
        return WatchEvent(EventType.DELETE, KeyValue(old.key, b"", 0, rev, 0, 0))

    def _expire(self) -> None:
        now = self._clock.now()
        for lease_id, state in list(self._leases.items()):
            if state.expiry <= now:
                self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        state = self._leases.pop(lease_id, None)
        if state is None or not state.keys:
            return
        self._revision += 1
        events = [self._apply_delete(raw, self._revision) for raw in sorted(state.keys)]
        self._commit(events)

    def _range(self, key: str, end: str | None, revision: int, limit: int) -> RangeResult:
        if revision and revision < self._compacted:
            raise Compacted(f"revision {revision} compacted", self._compacted)
        if revision and revision > self._revision:
            raise StoreUnavailable(f"future revision {revision}")
        keys = self._keys_in(encode_key(key), encode_key(end) if end is not None else None)
        if revision and revision != self._revision:
            kvs = self._historical(key, end, revision)
        else:
            kvs = [self._kvs[k] for k in keys]
        more = bool(limit) and len(kvs) > limit
        if limit:
            kvs = kvs[:limit]
        return RangeResult(tuple(kvs), revision or self._revision, more)

    def _historical(self, key: str, end: str | None, revision: int) -> list[KeyValue]:
        """Rebuild a range at an old revision by undoing later history."""
        state = {encode_key(kv.key): kv for kv in self._kvs.values()}
        # Undo newer events; for deleted keys the pre-image comes from older history.
        for rev, events in reversed(self._history):
            if rev <= revision:
                break
            for event in events:
                raw = encode_key(event.kv.key)
                state.pop(raw, None)
                prior = self._value_before(raw, rev)
                if prior is not None:
                    state[raw] = prior
        lo = encode_key(key)
        hi = encode_key(end) if end is not None else None

        def inside(raw: bytes) -> bool:
            if hi is None:
                return raw == lo
            return raw >= lo and (hi == b"\x00" or raw < hi)

        return [state[k] for k in sorted(state) if inside(k)]

    def _value_before(self, raw: bytes, rev: int) -> KeyValue | None:
        for old_rev, events in reversed(self._history):
            if old_rev >= rev:
                continue
            for event in reversed(events):
                if encode_key(event.kv.key) == raw:
                    return event.kv if event.type is EventType.PUT else None
        return None

    def _ensure_reaper(self) -> None:
        if isinstance(self._clock, ManualClock) or self._reaper is not None:
            return
        self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        # Real-clock leases must expire even when nobody calls the store.
        while not self._closed:
            await asyncio.sleep(0.01)
            if self._available:
                self._expire()

    # -- Store ----------------------------------------------------------------

    async def range(
        self,
        key: str,
        *,
        prefix: bool = False,
        range_end: str | None = None,
        revision: int = 0,
        limit: int = 0,
    ) -> RangeResult:
        await self._enter()
        end = prefix_end(key) if prefix else range_end
        return self._range(key, end, revision, limit)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        await self._enter()
        if lease and lease not in self._leases:
            raise LeaseExpired(f"lease {lease:x} not found")
        self._revision += 1
        self._commit([self._apply_put(key, value, lease, self._revision)])
        self._after_write()
        return self._revision

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        await self._enter()
        end = encode_key(prefix_end(key)) if prefix else None
        keys = self._keys_in(encode_key(key), end)
        if not keys:
            return 0
        self._revision += 1
        self._commit([self._apply_delete(raw, self._revision) for raw in keys])
        self._after_write()
        return len(keys)

    def _holds(self, compare: Compare) -> bool:
        if compare.range_end is None:
            return compare.holds(self._kvs.get(encode_key(compare.key)))
        keys = self._keys_in(encode_key(compare.key), encode_key(compare.range_end))
        if not keys:
            return compare.holds(None)
        return all(compare.holds(self._kvs[k]) for k in keys)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        await self._enter()
        if max(len(compares), len(success), len(failure)) > self.max_txn_ops:
            raise StoreUnavailable(
                "INVALID_ARGUMENT etcdserver: too many operations in txn request"
                f" ({len(compares)} compares, {len(success)} + {len(failure)} ops,"
                f" limit {self.max_txn_ops})"
            )
        succeeded = all(self._holds(c) for c in compares)
        ops = success if succeeded else failure
        for op in ops:
            if op.kind is OpKind.PUT and op.lease and op.lease not in self._leases:
                raise LeaseExpired(f"lease {op.lease:x} not found")
        writes = any(
            op.kind is OpKind.PUT
            or (
                op.kind is OpKind.DELETE
                and self._keys_in(
                    encode_key(op.key),
                    encode_key(op.range_end) if op.range_end is not None else None,
                )
            )
            for op in ops
        )
        rev = self._revision + 1 if writes else self._revision
        events: list[WatchEvent] = []
        responses: list[RangeResult | int] = []
        for op in ops:
            if op.kind is OpKind.GET:
                keys = self._keys_in(
                    encode_key(op.key),
                    encode_key(op.range_end) if op.range_end is not None else None,
                )
                responses.append(RangeResult(tuple(self._kvs[k] for k in keys), rev))
            elif op.kind is OpKind.PUT:
                events.append(self._apply_put(op.key, op.value, op.lease, rev))
                responses.append(rev)
            else:
                keys = self._keys_in(
                    encode_key(op.key),
                    encode_key(op.range_end) if op.range_end is not None else None,
                )
                events.extend(self._apply_delete(raw, rev) for raw in keys)
                responses.append(len(keys))
        self._revision = rev
        self._commit(events)
        if writes:
            self._after_write()
        return TxnResult(succeeded, rev, tuple(responses))

    async def grant(self, ttl: float) -> Lease:
        await self._enter()
        lease_id = next(self._lease_ids)
        self._leases[lease_id] = _LeaseState(ttl, self._clock.now() + ttl)
        self._ensure_reaper()
        return Lease(lease_id, ttl)

    async def keep_alive(self, lease_id: int) -> float:
        await self._enter()
        state = self._leases.get(lease_id)
        if state is None:
            raise LeaseExpired(f"lease {lease_id:x} not found")
        state.expiry = self._clock.now() + state.ttl
        return state.ttl

    async def revoke(self, lease_id: int) -> None:
        await self._enter()
        self._drop_lease(lease_id)

    async def time_to_live(self, lease_id: int) -> float:
        await self._enter()
        state = self._leases.get(lease_id)
        if state is None:
            return -1
        return max(0.0, state.expiry - self._clock.now())

    async def compact(self, revision: int) -> None:
        await self._enter()
        revision = min(revision, self._revision)
        if revision <= self._compacted:
            return
        # History is kept (reads at old revisions rebuild from it); only the
        # compaction mark is moved, which is what callers can observe.
        self._compacted = revision
        self._wake()

    def expire_leases(self) -> None:
        """Expire every lease whose deadline has passed (real-clock tests)."""
        self._expire()

    def lease_ids(self) -> list[int]:
        return list(self._leases)

    async def watch(
        self, key: str, *, prefix: bool = False, start_revision: int
    ) -> AsyncIterator[WatchBatch]:
        self._check()
        lo = encode_key(key)
        hi = encode_key(prefix_end(key)) if prefix else None

        def matches(kv: KeyValue) -> bool:
            raw = encode_key(kv.key)
            if hi is None:
                return raw == lo
            return lo <= raw < hi

        next_rev = start_revision or self._revision + 1
        wake = asyncio.Event()
        self._watchers.add(wake)
        try:
            while not self._closed:
                wake.clear()
                if self._available and not self._watches_paused:
                    if next_rev < self._compacted:
                        yield WatchBatch((), self._compacted, compacted=True)
                        return
                    revs = [rev for rev, _ in self._history]
                    start = bisect.bisect_left(revs, next_rev)
                    for rev, events in self._history[start:]:
                        selected = tuple(e for e in events if matches(e.kv))
                        next_rev = rev + 1
                        if selected:
                            yield WatchBatch(selected, rev)
                    if wake.is_set():
                        continue
                await wake.wait()
        finally:
            self._watchers.discard(wake)

    async def close(self) -> None:
        self._closed = True
        self._wake()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
