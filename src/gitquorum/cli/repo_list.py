"""``gitquorum repo list``: every repository of a virtual storage, read from etcd.

Gitaly has no RPC that lists repositories, and the proxy's own records are
the authority anyway, so the listing reads them where they live: the
repository records and the proxies' health votes under the cluster's etcd
prefix, with the etcd settings of the proxy configuration (``--config``) or
``--etcd``. It is read-only and needs no proxy running.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from pathlib import Path

from gitquorum.cli import render
from gitquorum.cli.repo_client import EXIT_USAGE, CliError
from gitquorum.cluster.decisions import outdated_replicas, up_to_date_replicas, valid_primaries
from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.etcd_store import EtcdConfig, EtcdStore
from gitquorum.cluster.health import HealthSnapshot, consensus
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.membership import decode_member
from gitquorum.cluster.repositories import RepositoryRecord, RepositoryStore
from gitquorum.config import EtcdSettings
from gitquorum.errors import InvalidArgument


@dataclass(frozen=True)
class Listed:
    record: RepositoryRecord
    # Healthy nodes by the proxies' consensus; None when no proxy is running
    # (nobody checks the nodes, so their health is unknown).
    healthy: frozenset[str] | None

    @property
    def status(self) -> str:
        """ok: every assigned replica up to date on a healthy node; degraded: some
        are not; unavailable: no healthy, up-to-date, assigned replica to serve;
        unknown: no proxy is running to judge node health."""
        if self.healthy is None:
            return "unknown"
        if not valid_primaries(self.record, self.healthy):
            return "unavailable"
        assigned = self.record.assigned or self.record.replica_nodes
        if outdated_replicas(self.record) or any(n not in self.healthy for n in assigned):
            return "degraded"
        return "ok"

    def as_dict(self) -> dict[str, object]:
        r = self.record
        return {
            "relative_path": r.relative_path,
            "repository_id": r.repository_id,
            "replica_path": r.replica_path,
            "primary": r.primary or "",
            "generation": r.generation,
            "assigned": list(r.assigned),
            "replicas": dict(r.replicas),
            "up_to_date": sorted(up_to_date_replicas(r)),
            "status": self.status,
        }


def etcd_settings(config_etcd: EtcdSettings | None, endpoints: str, cluster: str) -> EtcdSettings:
    if endpoints:
        names = tuple(e.strip() for e in endpoints.split(",") if e.strip())
        return EtcdSettings(names, cluster or "default")
    if config_etcd is None:
        raise CliError(
            "repo list reads the cluster state from etcd: pass --config FILE "
            "(a proxy configuration) or --etcd HOST:PORT[,HOST:PORT...]",
            EXIT_USAGE,
        )
    return config_etcd


def _password(settings: EtcdSettings) -> str | None:
    if not settings.password_file:
        return None
    try:
        return Path(settings.password_file).read_text().strip()
    except OSError as exc:
        raise CliError(f"cannot read etcd password file: {exc.strerror}", EXIT_USAGE) from exc


async def _read(
    settings: EtcdSettings, password: str | None, virtual_storage: str, per_request: float
) -> list[Listed]:
    store = EtcdStore(
        EtcdConfig(
            endpoints=settings.endpoints,
            ca_file=settings.ca_file or None,
            cert_file=settings.cert_file or None,
            key_file=settings.key_file or None,
            username=settings.username or None,
            password=password,
            # A command line answers quickly: no long retry loop on a dead etcd.
            request_timeout=min(per_request, 3.0),
            attempts=2,
        )
    )
    keys = Keyspace(cluster=settings.cluster)
    try:
        await store.connect()
        records = await RepositoryStore(store, keys).list(virtual_storage)
        members = await store.get_prefix(keys.proxies())
    finally:
        await store.close()
    views = {}
    for kv in members.kvs:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            views[kv.key[len(keys.proxies()) :]] = decode_member(kv.value)[1]
    healthy = (
        consensus(HealthSnapshot(frozenset(views), views)).healthy(virtual_storage)
        if views
        else None
    )
    return [Listed(r, healthy) for r in sorted(records, key=lambda r: r.relative_path)]


def list_repositories(settings: EtcdSettings, virtual_storage: str, timeout: float) -> list[Listed]:
    try:
        reading = _read(settings, _password(settings), virtual_storage, timeout)
        return asyncio.run(asyncio.wait_for(reading, timeout))
    except (StoreUnavailable, TimeoutError) as exc:
        endpoints = ", ".join(settings.endpoints)
        reason = str(exc) or f"no answer within {timeout:g}s"
        raise CliError(f"cannot read the cluster state from etcd at {endpoints}: {reason}") from exc
    except (ValueError, InvalidArgument) as exc:
        raise CliError(f"bad etcd settings or storage name: {exc}", EXIT_USAGE) from exc


def table(rows: list[Listed]) -> str:
    header = ("PATH", "PRIMARY", "GENERATION", "UP TO DATE", "STATUS", "ID")
    body = [
        (
            x.record.relative_path,
            x.record.primary,
            str(x.record.generation),
            f"{len(up_to_date_replicas(x.record))}/"
            f"{len(x.record.assigned or x.record.replica_nodes)}",
            x.status,
            str(x.record.repository_id),
        )
        for x in rows
    ]
    return render.table(header, body)
