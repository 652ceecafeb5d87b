"""A whole cluster for tests: real etcd, real storage nodes, real proxies.

Every part is a separate process on free loopback ports, so tests can kill
(-9), pause (SIGSTOP) and resume any of them. Logs stay in the cluster's
directory; ``log_tail`` prints them when a test fails.

The parts are the package's launcher (:mod:`gitquorum.launch`): its child
processes, its etcd members and its proxy configuration, with the settings
in which tests differ from ``gitquorum up`` passed as overrides.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from gitquorum.launch.etcd import EtcdCluster
from gitquorum.launch.process import free_ports
from gitquorum.launch.proxy_config import VIRTUAL_STORAGE, proxy_config
from tests.harness.node import NodeProcess
from tests.harness.pooled import PooledChild, workers_from_env

__all__ = ["HARNESS_PROXY_SETTINGS", "VIRTUAL_STORAGE", "Cluster", "ProxyProcess"]

# Where tests differ from gitquorum up's defaults: failures are seen within a
# second, leadership moves after 3 s, a stuck write fails after 5 s, and a
# proxy drains for as long as a production one (10 s).
# GITQUORUM_TEST_PROXY_WORKERS=N runs every proxy of the harness with N worker
# processes (the fault tests with workers > 1); unset: one process each.
WORKERS_ENV = "GITQUORUM_TEST_PROXY_WORKERS"


HARNESS_PROXY_SETTINGS: dict[str, Any] = {
    "health": {"interval": "250ms", "timeout": "500ms"},
    "election": {"ttl": "3s"},
    "vote_timeout": "5s",
    "write_timeout": "5s",
    "replication": {"reconcile_interval": "2s"},
    "graceful_timeout": "10s",
}


class ProxyProcess(PooledChild):
    """``gitquorum proxy --config CONFIG_PATH`` with its log and ready file in ``workdir``."""

    def __init__(self, name: str, config_path: Path, workdir: Path) -> None:
        super().__init__(name, workdir / f"{name}.log", workdir / f"{name}.ready")
        self.config_path = config_path
        self.workdir = workdir

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gitquorum.cli.main",
            "proxy",
            "--config",
            str(self.config_path),
            "--ready-file",
            str(self.ready_file),
        ]

    def start(self, timeout: float = 30.0) -> ProxyProcess:
        super().start(timeout)
        return self

    def log_tail(self, lines: int = 80) -> str:
        return super().log_tail(lines)

    def terminate(self, timeout: float = 30.0) -> int:
        return super().terminate(timeout)

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.address)


@dataclass
class Cluster:
    base: Path
    nodes_count: int = 3
    proxies_count: int = 1
    replication_factor: int = 3
    etcd_size: int = 1
    proxy_settings: dict[str, object] = field(default_factory=dict)
    # Given already started (e.g. with TLS and users), it is used as is (and closed).
    etcd: EtcdCluster | None = None
    # Extra command-line arguments and environment of every node (auth, TLS).
    node_args: list[str] = field(default_factory=list)
    node_env: dict[str, str] = field(default_factory=dict)
    nodes: list[NodeProcess] = field(default_factory=list)
    proxies: list[ProxyProcess] = field(default_factory=list)

    def start(self) -> Cluster:
        self.base.mkdir(parents=True, exist_ok=True)
        try:
            if self.etcd is None:
                self.etcd = EtcdCluster(size=self.etcd_size, base_dir=self.base / "etcd").start()
            ports = free_ports(self.nodes_count)
            for i in range(self.nodes_count):
                node = NodeProcess(
                    f"node{i + 1}",
                    self.base / f"node{i + 1}" / "storage",
                    self.base / "logs",
                    env=dict(self.node_env),
                    extra_args=list(self.node_args),
                    listen=f"127.0.0.1:{ports[i]}",
                )
                # Listed before it starts: a start that fails half-way stops it too.
                self.nodes.append(node)
                node.start()
            proxy_ports = free_ports(self.proxies_count)
            for i in range(self.proxies_count):
                name = f"proxy{i + 1}"
                config = self.proxy_config(name, proxy_ports[i])
                path = self.base / f"{name}.yaml"
                path.write_text(yaml.safe_dump(config))
                proxy = ProxyProcess(name, path, self.base / "logs")
                self.proxies.append(proxy)
                proxy.start()
        except BaseException:
            print(self.log_tail())
            self.close()
            raise
        return self

    def proxy_config(self, name: str, port: int) -> dict[str, object]:
        assert self.etcd is not None
        return proxy_config(
            name=name,
            listen=f"127.0.0.1:{port}",
            etcd_endpoints=self.etcd.endpoints,
            nodes=[(n.name, n.address) for n in self.nodes],
            replication_factor=self.replication_factor,
            overrides={
                **HARNESS_PROXY_SETTINGS,
                "workers": workers_from_env(WORKERS_ENV),
                **self.proxy_settings,
            },
        )

    def node(self, name: str) -> NodeProcess:
        return next(n for n in self.nodes if n.name == name)

    def replica_dir(self, node: str, replica_path: str) -> Path:
        return self.node(node).storage_path / replica_path

    def log_tail(self) -> str:
        parts = [f"--- {p.name} ---\n{p.log_tail()}" for p in self.proxies]
        parts += [f"--- {n.name} ---\n{n.log_tail(30)}" for n in self.nodes]
        if self.etcd is not None:
            parts.append(f"--- etcd ---\n{self.etcd.log_tail(10)}")
        return "\n".join(parts)

    @contextmanager
    def reporting(self) -> Iterator[Cluster]:
        """Yield the cluster; print its logs if the body fails; always close it."""
        try:
            yield self
        except BaseException:
            print(self.log_tail())
            raise
        finally:
            self.close()

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.terminate(10)
        for node in self.nodes:
            node.terminate(10)
        if self.etcd is not None:
            self.etcd.close()
