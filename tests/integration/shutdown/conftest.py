"""A real cluster for drain tests: etcd, three nodes and two proxies.

Proxies drain within a short grace period here (5 s) so a drain cut short is
quick to test. Every test starts with every process up and every node healthy.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from gitquorum.cluster.etcd_store import EtcdConfig, EtcdStore
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.queue import ReplicationJob, ReplicationQueue
from gitquorum.gitaly import repository_pb2, repository_pb2_grpc
from tests.harness import gitrepo
from tests.harness.cluster import Cluster, ProxyProcess
from tests.harness.node import NodeProcess
from tests.integration.proxy.helpers import repository, wait_all_healthy

GRACE = 5.0


@pytest.fixture(scope="module")
def drain_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(
        tmp_path_factory.mktemp("drain"),
        nodes_count=3,
        proxies_count=2,
        proxy_settings={
            "graceful_timeout": f"{GRACE}s",
            "replication": {"reconcile_interval": "1s"},
        },
    ).start()
    yield cluster
    cluster.close()


@pytest.fixture
def cluster(drain_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    for process in [*drain_cluster.nodes, *drain_cluster.proxies]:
        if not process.alive():
            process.start()
    wait_all_healthy(drain_cluster, timeout=60)
    yield drain_cluster
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(drain_cluster.log_tail())


def sigterm(process: ProxyProcess | NodeProcess) -> float:
    """Send SIGTERM without waiting; returns when it was sent (monotonic)."""
    assert process.proc is not None
    process.proc.send_signal(signal.SIGTERM)
    return time.monotonic()


def exit_code(process: ProxyProcess | NodeProcess, within: float) -> int:
    assert process.proc is not None
    return process.proc.wait(within)


def seed(address: str, relative: str, source: Path, scratch: Path) -> None:
    import asyncio

    async def run() -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            await gitrepo.seed(channel, repository(relative), source, scratch)

    asyncio.run(run())


def write_ref(address: str, relative: str, ref: str, oid: str, timeout: float = 15.0) -> None:
    with grpc.insecure_channel(address) as channel:
        repository_pb2_grpc.RepositoryServiceStub(channel).WriteRef(
            repository_pb2.WriteRefRequest(
                repository=repository(relative), ref=ref.encode(), revision=oid.encode()
            ),
            timeout=timeout,
        )


def jobs(cluster: Cluster) -> list[ReplicationJob]:
    """The replication queue, read from etcd."""
    import asyncio

    assert cluster.etcd is not None

    async def read() -> list[ReplicationJob]:
        store = EtcdStore(EtcdConfig(endpoints=cluster.etcd.endpoints))  # type: ignore[union-attr]
        await store.connect()
        try:
            return await ReplicationQueue(store, Keyspace(cluster="default")).jobs()
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return gitrepo.make_repo(
        tmp_path_factory.mktemp("drain-source") / "source", commits=3, binary_size=2 * 1024 * 1024
    )


@dataclass
class WriteLoop:
    """Writers creating unique refs in a loop, one thread per address.

    Every refusal ``expected`` accepts goes to ``refused`` (and the writer goes
    on); any other goes to ``unexpected``. ``acknowledged`` holds every ref a
    proxy confirmed, for the lost-write check.
    """

    relative: str
    oid: str
    prefix: str
    expected: Callable[[grpc.RpcError], bool]
    acknowledged: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _write(self, index: int, address: str) -> None:
        count = 0
        while not self._stop.is_set():
            ref = f"refs/heads/{self.prefix}{index}-{count}"
            count += 1
            try:
                write_ref(address, self.relative, ref, self.oid, timeout=15)
            except grpc.RpcError as exc:
                line = f"{ref}: {exc.code().name} {exc.details()}"  # type: ignore[attr-defined]
                with self._lock:
                    (self.refused if self.expected(exc) else self.unexpected).append(line)
                time.sleep(0.05)  # a client's pause before retrying
                continue
            with self._lock:
                self.acknowledged.append(ref)

    @contextmanager
    def running(self, writers: Sequence[tuple[int, str]]) -> Iterator[WriteLoop]:
        """Run one writer per (index, address) until the block ends."""
        threads = [threading.Thread(target=self._write, args=w) for w in writers]
        for thread in threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in threads:
                thread.join(30)
