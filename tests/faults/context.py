"""What a nemesis and the checker may know and do during a run.

The run's state comes from etcd itself (a linearizable range read through
etcd's JSON gateway, never a proxy's cache): which replica is primary, which
replicas are recorded up to date. Faults are logged on the run's one
monotonic clock (``time.monotonic``), the clock of every recorded operation.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gitquorum.cluster.repositories import RepositoryRecord, decode_record
from tests.chaos import nemesis as chaos_nemesis
from tests.chaos.conftest import until
from tests.chaos.workload import History
from tests.faults.base import Fault, FaultLog
from tests.harness.cluster import VIRTUAL_STORAGE, ProxyProcess
from tests.harness.node import NodeProcess

if TYPE_CHECKING:
    from tests.faults.base import Nemesis
    from tests.faults.cluster import FaultCluster


def read_records(cluster: FaultCluster) -> dict[str, RepositoryRecord]:
    """Every repository record of the virtual storage, by relative path."""
    return read_records_at(cluster)[0]


def read_records_at(cluster: FaultCluster) -> tuple[dict[str, RepositoryRecord], int]:
    """Every repository record of the virtual storage, by relative path, and
    the etcd revision they were read at."""
    found, revision = chaos_nemesis.etcd_range_at(cluster, f"repositories/{VIRTUAL_STORAGE}/")
    records: dict[str, RepositoryRecord] = {}
    for key, (value, mod_revision) in found.items():
        rid = int(key.rsplit("/", 1)[1])
        record = decode_record(VIRTUAL_STORAGE, rid, value, mod_revision)
        records[record.relative_path] = record
    return records, revision


# The most versions of one record read back for one window of a failed read.
VERSIONS_PER_WINDOW = 500


def record_versions(
    cluster: FaultCluster, record: RepositoryRecord, after: int, upto: int
) -> list[tuple[int, RepositoryRecord]]:
    """The versions of ``record``'s key written after revision ``after`` and
    at or before ``upto`` (mod_revision, record), newest first, walked back
    through etcd's history (the test clusters never compact it)."""
    key = f"repositories/{VIRTUAL_STORAGE}/{record.repository_id}"
    versions = []
    revision = upto
    for _ in range(VERSIONS_PER_WINDOW):
        found, _at = chaos_nemesis.etcd_range_at(cluster, key, revision=revision, one_key=True)
        if key not in found:
            break
        value, mod_revision = found[key]
        if mod_revision <= after:
            break
        rid = record.repository_id
        versions.append((mod_revision, decode_record(VIRTUAL_STORAGE, rid, value, mod_revision)))
        revision = mod_revision - 1
    return versions


@dataclass
class RunContext:
    cluster: FaultCluster
    rng: random.Random
    repos: list[str]
    history: History
    faults: FaultLog = field(default_factory=FaultLog)
    notes: list[str] = field(default_factory=list)

    # -- the fault log -----------------------------------------------------------------

    def fault(self, nemesis: Nemesis, target: str, **details: Any) -> Fault:
        """Open (log) a fault of ``nemesis`` on ``target`` starting now."""
        return self.faults.open(
            Fault(
                nemesis.name,
                nemesis.kind,
                target,
                time.monotonic(),
                reads_available=nemesis.reads_available,
                recovery=nemesis.recovery,
                **details,
            )
        )

    def note(self, text: str) -> None:
        self.notes.append(f"{time.monotonic():.2f} {text}")

    # -- the cluster -------------------------------------------------------------------

    def records(self) -> dict[str, RepositoryRecord]:
        return read_records(self.cluster)

    def record(self, repo: str) -> RepositoryRecord:
        return self.records()[repo]

    def primary(self, repo: str) -> str:
        primary = self.record(repo).primary
        assert primary is not None, f"{repo} has no primary"
        return primary

    def pick_repo(self) -> str:
        return self.rng.choice(self.repos)

    def node(self, name: str) -> NodeProcess:
        return self.cluster.node(name)

    def proxy(self, name: str) -> ProxyProcess:
        return self.cluster.proxy(name)

    def leader(self) -> str | None:
        return chaos_nemesis.leader(self.cluster)

    def live_proxies(self) -> list[ProxyProcess]:
        return [p for p in self.cluster.proxies if p.alive()]

    # -- waiting -----------------------------------------------------------------------

    async def until(self, predicate: Callable[[], Any], within: float, what: str) -> Any:
        return await until(predicate, within, what)

    async def acknowledged(self, count: int, within: float, repo: str | None = None) -> bool:
        """Wait (bounded) for ``count`` writes acknowledged from now on; False on timeout."""
        since = time.monotonic()
        deadline = since + within
        while time.monotonic() < deadline:
            done = sum(
                1
                for o in self.history.writes("ok")
                if o.start >= since and (repo is None or o.repo == repo)
            )
            if done >= count:
                return True
            await asyncio.sleep(0.05)
        return False
