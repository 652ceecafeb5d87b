"""What the tests of a proxy with worker processes share: connecting, starting one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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
