"""Real etcd for the cluster layer: ``etcd1`` (one member, shared by the
session; tests use their own keyspace) and ``etcd3`` (three fresh members per
test, for tests that kill or pause members)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from gitquorum.cluster.etcd_store import EtcdConfig, EtcdStore
from gitquorum.cluster.keys import Keyspace
from tests.harness.etcd import EtcdCluster


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rep_call", None)
    return bool(report is not None and report.failed)


@pytest.fixture(scope="session")
def etcd1_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(1, tmp_path_factory.mktemp("etcd1")).start()
    yield cluster
    cluster.close()


@pytest.fixture
def etcd1(etcd1_session: EtcdCluster, request: pytest.FixtureRequest) -> Iterator[EtcdCluster]:
    if not etcd1_session.members[0].alive():
        etcd1_session.restart(0)
    yield etcd1_session
    if _failed(request):
        print(etcd1_session.log_tail())


@pytest.fixture
def etcd3(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(3, tmp_path / "etcd3").start()
    yield cluster
    if _failed(request):
        print(cluster.log_tail())
    cluster.close()


@pytest.fixture
def keys() -> Keyspace:
    return Keyspace(f"t{uuid.uuid4().hex[:12]}")


StoreFactory = Callable[..., EtcdStore]


@pytest.fixture
async def make_store() -> AsyncIterator[StoreFactory]:
    """Separate etcd clients (one per simulated proxy); all closed afterwards."""
    stores: list[EtcdStore] = []

    def make(cluster: EtcdCluster, **options: object) -> EtcdStore:
        store = EtcdStore(EtcdConfig(endpoints=tuple(cluster.endpoints), **options))  # type: ignore[arg-type]
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.close()
