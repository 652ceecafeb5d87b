"""A whole cluster for tests: real etcd, real storage nodes, real proxies.

Every part is a separate process on free loopback ports, so tests can kill
(-9), pause (SIGSTOP) and resume any of them. Logs stay in the cluster's
directory; ``log_tail`` prints them when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import yaml

from tests.harness.etcd import EtcdCluster, free_ports
from tests.harness.node import NodeProcess, wait_for

VIRTUAL_STORAGE = "default"


@dataclass
class ProxyProcess:
    name: str
    config_path: Path
    workdir: Path
    address: str = ""
    metrics_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 30.0) -> ProxyProcess:
        ready = self.workdir / f"{self.name}.ready"
        ready.unlink(missing_ok=True)
        with open(self.log_path, "ab") as logfile:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gitquorum.cli.main",
                    "proxy",
                    "--config",
                    str(self.config_path),
                    "--ready-file",
                    str(ready),
                ],
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=os.environ.copy(),
            )

        def is_ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"proxy {self.name} exited:\n{self.log_tail()}")
            return ready.exists() and ready.read_text().endswith("\n")

        wait_for(is_ready, timeout, what=f"proxy {self.name} to serve")
        address, metrics = ready.read_text().split()
        self.address, self.metrics_port = address, int(metrics)
        return self

    def log_tail(self, lines: int = 80) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

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
                self.nodes.append(node.start())
            proxy_ports = free_ports(self.proxies_count)
            for i in range(self.proxies_count):
                name = f"proxy{i + 1}"
                config = self.proxy_config(name, proxy_ports[i])
                path = self.base / f"{name}.yaml"
                path.write_text(yaml.safe_dump(config))
                self.proxies.append(ProxyProcess(name, path, self.base / "logs").start())
        except BaseException:
            print(self.log_tail())
            self.close()
            raise
        return self

    def proxy_config(self, name: str, port: int) -> dict[str, object]:
        assert self.etcd is not None
        config: dict[str, object] = {
            "listen": f"127.0.0.1:{port}",
            "name": name,
            "etcd": {"endpoints": self.etcd.endpoints},
            "virtual_storages": [
                {
                    "name": VIRTUAL_STORAGE,
                    "default_replication_factor": self.replication_factor,
                    "nodes": [{"storage": n.name, "address": n.address} for n in self.nodes],
                }
            ],
            "health": {"interval": "250ms", "timeout": "500ms"},
            "election": {"ttl": "3s"},
            "vote_timeout": "5s",
            "write_timeout": "5s",
            "replication": {"reconcile_interval": "2s"},
            "log_level": "info",
        }
        config.update(self.proxy_settings)
        return config

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
