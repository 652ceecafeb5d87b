"""One read of the cluster state in etcd, for the admin commands.

Proxies, the leader, health votes and their consensus, repository records,
the replication queue and the operator state, as immutable values for the
same pure functions the proxies use (``valid_primaries``, ``dataloss``,
``queue_stats``...). Each prefix is one consistent snapshot; the prefixes are
read one after the other, which is precise enough for a report.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from gitquorum.cluster.health import Consensus, HealthMap, HealthSnapshot, consensus
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.operator_state import OperatorSnapshot, OperatorState
from gitquorum.cluster.queue import ReplicationJob, decode_job
from gitquorum.cluster.repositories import RepositoryRecord, decode_record
from gitquorum.cluster.store import Store


@dataclass(frozen=True)
class ProxyMember:
    name: str
    address: str
    started_at: float
    health: HealthMap
    # Hashes of its cluster-wide settings (empty: published none).
    settings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterView:
    proxies: tuple[ProxyMember, ...]
    leader: str | None
    consensus: Consensus
    records: tuple[RepositoryRecord, ...]
    jobs: tuple[ReplicationJob, ...]
    operator: OperatorSnapshot
    # Local wall time of the read (ages of jobs are measured against it).
    read_at: float

    def healthy(self, virtual_storage: str) -> frozenset[str]:
        return self.consensus.healthy(virtual_storage)

    def healthy_map(self) -> dict[str, frozenset[str]]:
        names = {r.virtual_storage for r in self.records} | set(self.consensus.healthy_nodes)
        return {vs: self.healthy(vs) for vs in names}

    def records_of(self, virtual_storage: str) -> list[RepositoryRecord]:
        return [r for r in self.records if r.virtual_storage == virtual_storage]

    def record(self, virtual_storage: str, relative_path: str) -> RepositoryRecord | None:
        for record in self.records:
            if record.virtual_storage == virtual_storage and record.relative_path == relative_path:
                return record
        return None


def _member(name: str, value: bytes) -> ProxyMember | None:
    try:
        data = json.loads(value)
        health = {
            str(vs): {str(node): bool(ok) for node, ok in nodes.items()}
            for vs, nodes in (data.get("health") or {}).items()
        }
        settings = {str(k): str(v) for k, v in (data.get("settings") or {}).items()}
        return ProxyMember(
            name,
            str(data.get("address", "")),
            float(data.get("started_at", 0.0)),
            health,
            settings,
        )
    except (ValueError, AttributeError, TypeError):
        return None


def leader_name(value: bytes) -> str:
    with contextlib.suppress(ValueError, KeyError, TypeError):
        return str(json.loads(value)["proxy"])
    return "?"


async def read_proxies(store: Store, keys: Keyspace) -> tuple[ProxyMember, ...]:
    result = await store.get_prefix(keys.proxies())
    members = []
    for kv in result.kvs:
        member = _member(kv.key[len(keys.proxies()) :], kv.value)
        if member is not None:
            members.append(member)
    return tuple(sorted(members, key=lambda m: m.name))


def consensus_of(proxies: Sequence[ProxyMember]) -> Consensus:
    return consensus(
        HealthSnapshot(frozenset(p.name for p in proxies), {p.name: p.health for p in proxies})
    )


async def read_records(store: Store, keys: Keyspace) -> tuple[RepositoryRecord, ...]:
    result = await store.get_prefix(keys.repositories())
    records = []
    for kv in result.kvs:
        vs, rid = keys.parse_repository(kv.key)
        records.append(decode_record(vs, rid, kv.value, kv.mod_revision))
    return tuple(records)


async def read_view(store: Store, keys: Keyspace, *, with_jobs: bool = True) -> ClusterView:
    proxies = await read_proxies(store, keys)
    leader_kv = await store.get(keys.leader())
    records = await read_records(store, keys)
    jobs: tuple[ReplicationJob, ...] = ()
    if with_jobs:
        result = await store.get_prefix(keys.jobs())
        jobs = tuple(decode_job(keys, kv) for kv in result.kvs)
    operator = await OperatorState(store, keys).snapshot()
    return ClusterView(
        proxies=proxies,
        leader=leader_name(leader_kv.value) if leader_kv is not None else None,
        consensus=consensus_of(proxies),
        records=records,
        jobs=jobs,
        operator=operator,
        read_at=time.time(),
    )
