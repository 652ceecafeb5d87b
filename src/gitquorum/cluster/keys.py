"""The etcd keyspace: every key the cluster layer reads or writes.

All keys of one cluster live under one prefix, ``/gitquorum/<cluster>/``, so
several clusters can share an etcd and one ``etcdctl del --prefix`` wipes one.
``docs/keyspace.md`` documents each key, its value format, lease and writer;
this module is the only place key strings are built.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

from gitquorum.errors import InvalidArgument

DEFAULT_ROOT = "/gitquorum"
DEFAULT_CLUSTER = "default"


def check_name(kind: str, name: str) -> str:
    """A name used as one key segment: it must not be empty or contain '/'."""
    if not name or "/" in name or name in (".", ".."):
        raise InvalidArgument(f"invalid {kind} name {name!r}")
    return name


@functools.lru_cache(maxsize=8192)
def replica_path(repository_id: int) -> str:
    """Where replicas of a repository live on the nodes.

    ``@cluster/repositories/<hh>/<hh>/<id>``: the two levels are the first two
    bytes of sha256 of the decimal id, which spreads repositories evenly over
    directories without any global registry. Pure, and asked for on every
    routed call: the busy repositories' paths are kept.
    """
    digest = hashlib.sha256(str(repository_id).encode()).hexdigest()
    return f"@cluster/repositories/{digest[:2]}/{digest[2:4]}/{repository_id}"


@dataclass(frozen=True)
class Keyspace:
    """Builds and parses the keys of one cluster."""

    cluster: str = DEFAULT_CLUSTER
    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        check_name("cluster", self.cluster)
        if not self.root.startswith("/") or self.root.endswith("/"):
            raise InvalidArgument(f"key root must start and not end with '/': {self.root!r}")

    @property
    def prefix(self) -> str:
        return f"{self.root}/{self.cluster}/"

    # Proxies, each with its view of node health in the same value, so that
    # membership and votes change together (lease: the proxy's own lease).
    def proxies(self) -> str:
        return f"{self.prefix}proxies/"

    def proxy(self, name: str) -> str:
        return f"{self.proxies()}{check_name('proxy', name)}"

    # Leader election (lease: the leader's election lease).
    def leader(self, election: str = "leader") -> str:
        return f"{self.prefix}election/{check_name('election', election)}"

    # Repository records.
    def repository_id_counter(self) -> str:
        return f"{self.prefix}ids/repository"

    def repositories(self, virtual_storage: str | None = None) -> str:
        base = f"{self.prefix}repositories/"
        if virtual_storage is None:
            return base
        return f"{base}{check_name('virtual storage', virtual_storage)}/"

    def repository(self, virtual_storage: str, repository_id: int) -> str:
        return f"{self.repositories(virtual_storage)}{int(repository_id)}"

    def parse_repository(self, key: str) -> tuple[str, int]:
        """(virtual storage, repository id) of a repository record key."""
        rest = key[len(self.repositories()) :]
        virtual_storage, _, rid = rest.partition("/")
        return virtual_storage, int(rid)

    def paths(self, virtual_storage: str) -> str:
        return f"{self.prefix}paths/{check_name('virtual storage', virtual_storage)}/"

    def path(self, virtual_storage: str, relative_path: str) -> str:
        if not relative_path:
            raise InvalidArgument("empty relative path")
        return f"{self.paths(virtual_storage)}{relative_path}"

    # Replication queue.
    def jobs(
        self,
        virtual_storage: str | None = None,
        target: str | None = None,
        repository_id: int | None = None,
    ) -> str:
        key = f"{self.prefix}jobs/"
        if virtual_storage is None:
            return key
        key += f"{check_name('virtual storage', virtual_storage)}/"
        if target is None:
            return key
        key += f"{check_name('node', target)}/"
        if repository_id is None:
            return key
        return f"{key}{int(repository_id)}/"

    def job(self, virtual_storage: str, target: str, repository_id: int, job_id: str) -> str:
        return f"{self.jobs(virtual_storage, target, repository_id)}{check_name('job', job_id)}"

    def locks(self, virtual_storage: str | None = None, target: str | None = None) -> str:
        key = f"{self.prefix}locks/"
        if virtual_storage is None:
            return key
        key += f"{check_name('virtual storage', virtual_storage)}/"
        if target is None:
            return key
        return f"{key}{check_name('node', target)}/"

    # Unfinished writes: one key per write that may have committed on some
    # replica and whose outcome is not recorded yet (no lease: it must outlive
    # a proxy that dies mid-write). ``cluster.intents``.
    def intents(self, virtual_storage: str, repository_id: int | None = None) -> str:
        key = f"{self.prefix}intents/{check_name('virtual storage', virtual_storage)}/"
        if repository_id is None:
            return key
        return f"{key}{int(repository_id)}/"

    def intent(self, virtual_storage: str, repository_id: int, intent_id: str) -> str:
        return f"{self.intents(virtual_storage, repository_id)}{check_name('intent', intent_id)}"

    # When each replica was last verified (the leader's verifier).
    def verifications(
        self, virtual_storage: str | None = None, repository_id: int | None = None
    ) -> str:
        key = f"{self.prefix}verified/"
        if virtual_storage is None:
            return key
        key += f"{check_name('virtual storage', virtual_storage)}/"
        if repository_id is None:
            return key
        return f"{key}{int(repository_id)}/"

    def verification(self, virtual_storage: str, repository_id: int, node: str) -> str:
        return f"{self.verifications(virtual_storage, repository_id)}{check_name('node', node)}"

    def parse_verification(self, key: str) -> tuple[str, int, str]:
        """(virtual storage, repository id, node) of a verification key."""
        virtual_storage, rid, node = key[len(self.verifications()) :].split("/")
        return virtual_storage, int(rid), node

    # Primary changes (failover, switchover), newest last; bounded by cluster.history.
    def history(self) -> str:
        return f"{self.prefix}history/"

    def lock(self, virtual_storage: str, target: str, repository_id: int) -> str:
        return f"{self.locks(virtual_storage, target)}{int(repository_id)}"

    def parse_lock(self, key: str) -> tuple[str, str, int]:
        """(virtual storage, target node, repository id) of a lock key."""
        virtual_storage, target, rid = key[len(self.locks()) :].split("/")
        return virtual_storage, target, int(rid)
