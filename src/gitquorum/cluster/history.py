"""The history of primary changes and verifier verdicts, in etcd, bounded.

Keys (under the cluster prefix, see ``docs/keyspace.md``; no lease)::

    history/<unix microseconds, 17 digits>-<8 hex>  ->  {"at":..,"kind":..,"vs":..,"id":..,
                                               "path":..,"from":..,"to":..,"by":..,"reason":..,
                                               "details":{..}}

A primary change (``failover``, ``switchover``) is written after the change it
describes is recorded (the compare-and-swap on the repository record), by the
leader's failover, by a proxy's lazy failover at write time, and by
``gitquorum switchover``/``drain``/``track-repository``. The record is what
makes the change; such an entry is its account, written best effort: a lost
entry never undoes or blocks a change, and an entry never exists for a change
that did not happen.

A ``verdict`` of the verifier goes in the same txn as the settlement it
describes (:meth:`History.op`): it exists exactly when the verdict was stored,
even if the leader died before it could log a line. Its ``details`` say which
replicas were demoted, from which sources they are repaired, and which
references differed.

Keys sort by the writer's wall clock; the log keeps the newest :data:`LIMIT`
entries: each writer trims on its first entry and every :data:`TRIM_EVERY`
after that, so the log holds at most ``LIMIT + TRIM_EVERY`` entries per writer
between trims. ``gitquorum history`` reads it.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.repositories import RepositoryRecord
from gitquorum.cluster.store import Op, OpKind, Store

log = logging.getLogger(__name__)

LIMIT = 1000
TRIM_EVERY = 50

FAILOVER = "failover"
SWITCHOVER = "switchover"
VERDICT = "verdict"


@dataclass(frozen=True, slots=True)
class Event:
    """One primary change: ``old`` (None: there was none) to ``new``."""

    at: float
    kind: str
    virtual_storage: str
    repository_id: int
    relative_path: str
    old: str | None
    new: str | None
    by: str = ""
    reason: str = ""
    # What else a verdict says (demoted replicas, sources, differing references).
    details: Mapping[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        value: dict[str, Any] = {
            "at": round(self.at, 3),
            "kind": self.kind,
            "vs": self.virtual_storage,
            "id": self.repository_id,
            "path": self.relative_path,
            "from": self.old,
            "to": self.new,
            "by": self.by,
            "reason": self.reason,
        }
        if self.details:
            value["details"] = dict(self.details)
        return json.dumps(value, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, value: bytes) -> Event:
        """An entry; ValueError when it is not one (a hand-edited key)."""
        try:
            data = json.loads(value)
            return cls(
                float(data["at"]),
                str(data["kind"]),
                str(data["vs"]),
                int(data["id"]),
                str(data.get("path", "")),
                _node(data.get("from")),
                _node(data.get("to")),
                str(data.get("by", "")),
                str(data.get("reason", "")),
                dict(data.get("details") or {}),
            )
        except (TypeError, KeyError, AttributeError, ValueError) as exc:
            raise ValueError(f"not a history entry: {value[:80]!r}") from exc

    def data(self) -> dict[str, Any]:
        """As ``gitquorum history --json`` prints it."""
        return {
            "at": self.at,
            "kind": self.kind,
            "virtual_storage": self.virtual_storage,
            "repository_id": self.repository_id,
            "relative_path": self.relative_path,
            "from": self.old,
            "to": self.new,
            "by": self.by,
            "reason": self.reason,
            "details": dict(self.details),
        }


def _node(value: object) -> str | None:
    return None if value is None else str(value)


def entry_name(at: float, token: str) -> str:
    """The key's last segment: sorts by time, unique across writers."""
    return f"{round(at * 1e6):017d}-{token}"


def overflow(names: Sequence[str], limit: int) -> str | None:
    """The oldest name to keep when ``names`` (sorted) exceed ``limit``; None: keep all.

    Everything sorting before it goes.
    """
    if limit <= 0:
        raise ValueError("the history keeps at least one entry")
    if len(names) <= limit:
        return None
    return names[len(names) - limit]


class History:
    """Appends to and reads the history log of one cluster."""

    def __init__(
        self,
        store: Store,
        keys: Keyspace,
        *,
        limit: int = LIMIT,
        trim_every: int = TRIM_EVERY,
        clock: Callable[[], float] = time.time,
        writer: str = "",
    ) -> None:
        self.writer = writer
        self.store = store
        self.keys = keys
        self.limit = limit
        self.trim_every = trim_every
        self.clock = clock
        self._written = 0

    async def record(self, event: Event) -> None:
        """Append ``event``; trims now and then. Raises what the store raises."""
        await self.store.put(self._key(event), event.encode())
        if self._written % self.trim_every == 0:
            await self.trim()
        self._written += 1

    def op(self, event: Event) -> Op:
        """``event`` as an op of another txn: the entry exists iff the txn applies."""
        return Op.put(self._key(event), event.encode())

    def entry_of(self, op: Op) -> str:
        """The entry name (the key's last segment) an :meth:`op` writes."""
        return op.key[len(self.keys.history()) :]

    def _key(self, event: Event) -> str:
        return self.keys.history() + entry_name(event.at, secrets.token_hex(4))

    async def written_in_txn(self) -> None:
        """Count an entry written by :meth:`op`'s txn; trims now and then, quietly
        (the entry is stored; a trim left for later only delays the bound)."""
        if self._written % self.trim_every == 0:
            try:
                await self.trim()
            except Exception as exc:
                log.warning("history not trimmed: %s", exc)
        self._written += 1

    async def record_quietly(self, event: Event) -> None:
        """:meth:`record`, logging instead of raising: the change it describes is done."""
        try:
            await self.record(event)
        except Exception as exc:  # the change is recorded; its account is best effort
            log.warning("history entry not written: %s", exc)

    async def primary_moved(
        self, kind: str, record: RepositoryRecord, old: str | None, new: str | None, reason: str
    ) -> None:
        """Account (quietly) for ``record``'s primary having moved from ``old`` to ``new``."""
        await self.record_quietly(
            self.event(
                kind,
                record.virtual_storage,
                record.repository_id,
                record.relative_path,
                old,
                new,
                reason=reason,
            )
        )

    def event(
        self,
        kind: str,
        virtual_storage: str,
        repository_id: int,
        relative_path: str,
        old: str | None,
        new: str | None,
        *,
        by: str | None = None,
        reason: str = "",
        details: Mapping[str, Any] | None = None,
    ) -> Event:
        """An event now, by ``by`` (default: this writer)."""
        return Event(
            self.clock(),
            kind,
            virtual_storage,
            repository_id,
            relative_path,
            old,
            new,
            self.writer if by is None else by,
            reason,
            dict(details or {}),
        )

    async def trim(self) -> int:
        """Delete the entries beyond the newest ``limit``; returns how many went."""
        prefix = self.keys.history()
        names = [kv.key[len(prefix) :] for kv in (await self.store.get_prefix(prefix)).kvs]
        keep_from = overflow(names, self.limit)
        if keep_from is None:
            return 0
        # One range delete: every entry sorting before the oldest one kept.
        await self.store.txn([], [Op(OpKind.DELETE, prefix, range_end=prefix + keep_from)])
        return len(names) - self.limit

    async def events(self) -> list[Event]:
        """Every entry, oldest first; unreadable entries are skipped."""
        result = await self.store.get_prefix(self.keys.history())
        events = []
        for kv in result.kvs:
            try:
                events.append(Event.decode(kv.value))
            except ValueError:
                log.warning("skipping unreadable history entry %s", kv.key)
        return events
