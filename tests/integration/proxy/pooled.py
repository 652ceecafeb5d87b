"""What the tests of a proxy with worker processes share: reading its workers, connecting."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import yaml

from gitquorum.launch.process import free_ports
from tests.harness.cluster import Cluster, ProxyProcess
from tests.integration.proxy import helpers


def connect(address: str) -> grpc.aio.Channel:
    """A channel with its own connection: grpc shares one between channels of a
    process by default, which would send them all to one worker."""
    return grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


@dataclass(frozen=True)
class Worker:
    address: str
    metrics_port: int
    vote_address: str
    pid: int


def workers_of(proxy: ProxyProcess, count: int = 2) -> list[Worker]:
    """Each worker's ready file: ``ADDRESS METRICS_PORT VOTE_ADDRESS PID``."""
    assert proxy.ready_file is not None
    found = []
    for index in range(count):
        words = Path(f"{proxy.ready_file}.worker{index}").read_text().split()
        found.append(Worker(words[0], int(words[1]), words[2], int(words[3])))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone as far as serving goes: its parent has not reaped it yet.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def extra_proxy(cluster: Cluster, name: str, **settings: object) -> ProxyProcess:
    """Another proxy of ``cluster`` on a free port (the cluster's settings, plus ``settings``)."""
    port = free_ports(1)[0]
    config = {**cluster.proxy_config(name, port), **settings}
    path = cluster.base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return ProxyProcess(name, path, cluster.base / "logs")


@contextmanager
def pooled_cluster(base: Path, settings: dict[str, object]) -> Iterator[Cluster]:
    """Three nodes and one proxy with ``settings`` (its workers), every node healthy."""
    cluster = Cluster(base, nodes_count=3, proxy_settings=settings).start()
    with cluster.reporting():
        helpers.wait_all_healthy(cluster)
        yield cluster
