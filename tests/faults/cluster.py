"""The fault suite's cluster: three etcd members, three nodes, three proxies.

Every proxy reaches etcd, every node, and is reached back by the nodes (the
vote dial-back) through paths that :mod:`tests.faults.network` can cut, slow
or make lossy one at a time; :mod:`tests.faults.disk` prepares the nodes'
storage so that a disk can fill up or slow down. Everything else is the
harness's :class:`~tests.harness.cluster.Cluster`: real processes on free
loopback ports.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.faults import disk, network
from tests.harness.cluster import Cluster, ProxyProcess

# Health checks as in production (every second, 1 s timeout: a loaded machine
# must not fail healthy nodes over); the verifier checks often (its repairs are
# counted) and repairs start within a second.
FAULT_PROXY_SETTINGS: dict[str, object] = {
    "health": {"interval": "1s", "timeout": "1s"},
    "replication": {"reconcile_interval": "1s", "verify_interval": "5s"},
}


@dataclass
class FaultCluster(Cluster):
    etcd_size: int = 3
    proxies_count: int = 3
    paths: network.Paths = field(default_factory=network.Paths)
    disks: disk.Disks = field(default_factory=disk.Disks)

    def start(self) -> FaultCluster:
        self.base.mkdir(parents=True, exist_ok=True)
        self.disks.prepare(self)
        super().start()
        return self

    def proxy_config(self, name: str, port: int) -> dict[str, object]:
        return self.paths.proxy_config(self, name, super().proxy_config(name, port))

    def proxy(self, name: str) -> ProxyProcess:
        return next(p for p in self.proxies if p.name == name)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.paths.close()
            self.disks.close(self)
