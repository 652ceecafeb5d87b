"""A replica the health consensus calls unhealthy still serves reads when no
healthy one is left, and a read of one that cannot answer still fails fast.

The fault suite's finding (docs/reliability.md, CI seed 915220487): a node,
the only up-to-date replica of a few repositories while another was down,
missed two health checks under load; the proxies' consensus called it
unhealthy and its reads were refused for a moment although it was serving.
Health decides where writes go and who may become primary; a read only needs
a replica that holds every acknowledged write, and an up-to-date replica does
whatever the checks say about it.

Here two more proxy members are registered in the cluster's real etcd (under
a lease, as proxies register) whose published views call every node
unhealthy: with three live members, the real proxy's own view is outvoted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gitquorum.cluster.etcd_store import EtcdConfig, EtcdStore
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.membership import encode_member
from gitquorum.gitaly import commit_pb2, commit_pb2_grpc, ref_pb2, ref_pb2_grpc
from tests.harness import gitrepo
from tests.harness.cluster import VIRTUAL_STORAGE, Cluster
from tests.harness.node import wait_for
from tests.integration.proxy.helpers import (
    commit,
    create,
    ok,
    push,
    repository,
    run_git,
    sample,
    scrape,
    url,
    wait_all_healthy,
)

# Each replica's health check within it; far shorter than the client's deadline
# of the bounded read below, so that the read ending with UNAVAILABLE rather
# than DEADLINE_EXCEEDED shows the bound.
SETTINGS = {"reads": {"last_resort_timeout": "1s"}}
CLIENT_DEADLINE = 20.0
OUTVOTERS = ("outvoter-a", "outvoter-b")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("last-resort")
    started = Cluster(base, nodes_count=3, proxies_count=1, proxy_settings=SETTINGS).start()
    with started.reporting():
        yield started


@pytest.fixture
def seeded(cluster: Cluster, tmp_path: Path) -> tuple[str, str]:
    """A repository with one pushed commit on main: (relative path, commit id)."""
    wait_all_healthy(cluster)
    relative_path = f"last-resort/{tmp_path.name}.git"
    address = cluster.proxies[0].address
    create(address, relative_path)
    work = tmp_path / "work"
    gitrepo.git("init", "-q", "-b", "main", str(work))
    head = commit(work, "a.txt")
    push(address, relative_path, work, "main")
    return relative_path, head


def _outvote(cluster: Cluster, *, healthy: bool) -> None:
    """Register (or, with ``healthy``, remove) two members that see no node healthy."""
    assert cluster.etcd is not None
    keys = Keyspace()
    nodes = {n.name: False for n in cluster.nodes}

    async def change() -> None:
        store = EtcdStore(EtcdConfig(endpoints=tuple(cluster.etcd.endpoints)))  # type: ignore[union-attr]
        await store.connect()
        try:
            if healthy:
                for name in OUTVOTERS:
                    await store.delete(keys.proxy(name))
                return
            lease = await store.grant(120)
            for name in OUTVOTERS:
                value = encode_member("127.0.0.1:1", time.time(), {VIRTUAL_STORAGE: nodes})
                await store.put(keys.proxy(name), value, lease=lease.id)
        finally:
            await store.close()

    asyncio.run(change())


def _consensus(cluster: Cluster) -> set[str]:
    text = scrape(cluster.proxies[0].metrics_port)
    return {
        n.name
        for n in cluster.nodes
        if sample(text, "gitquorum_node_healthy", storage=n.name, view="consensus") == 1.0
    }


@pytest.fixture
def outvoted(cluster: Cluster, seeded: tuple[str, str]) -> Iterator[Cluster]:
    """Every node unhealthy by consensus, each reachable and serving (after the
    repository was seeded: writes need healthy nodes)."""
    _outvote(cluster, healthy=False)
    try:
        wait_for(lambda: not _consensus(cluster), 20, 0.1, "the consensus to see no node healthy")
        yield cluster
    finally:
        _outvote(cluster, healthy=True)
        for node in cluster.nodes:
            if node.alive():
                node.resume()
        wait_all_healthy(cluster)


def _find_commit(address: str, relative_path: str) -> str:
    with grpc.insecure_channel(address) as channel:
        found = commit_pb2_grpc.CommitServiceStub(channel).FindCommit(
            commit_pb2.FindCommitRequest(repository=repository(relative_path), revision=b"main"),
            timeout=CLIENT_DEADLINE,
        )
    return found.commit.id


def test_reads_are_served_by_up_to_date_replicas_the_consensus_calls_unhealthy(
    outvoted: Cluster, seeded: tuple[str, str], tmp_path: Path
) -> None:
    relative_path, head = seeded
    address = outvoted.proxies[0].address
    before = sample(scrape(outvoted.proxies[0].metrics_port), "gitquorum_read_last_resort_total")

    # A unary read, and a streaming one: a real clone over git-ssh.
    assert _find_commit(address, relative_path) == head
    clone = tmp_path / "clone"
    ok(run_git("clone", "-q", url(address, relative_path), str(clone)))
    assert gitrepo.git("rev-parse", "HEAD", cwd=clone).strip() == head

    after = sample(scrape(outvoted.proxies[0].metrics_port), "gitquorum_read_last_resort_total")
    assert after >= before + 2
    # Writes still go only to healthy replicas: refused, nothing changes.
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as refused:
        ref_pb2_grpc.RefServiceStub(channel).DeleteRefs(
            ref_pb2.DeleteRefsRequest(
                repository=repository(relative_path), refs=[b"refs/heads/main"]
            ),
            timeout=CLIENT_DEADLINE,
        )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert _find_commit(address, relative_path) == head


def test_a_last_resort_read_of_replicas_that_cannot_answer_fails_fast(
    outvoted: Cluster, seeded: tuple[str, str], tmp_path: Path
) -> None:
    relative_path, _ = seeded
    address = outvoted.proxies[0].address
    for node in outvoted.nodes:
        node.pause()
    try:
        with pytest.raises(grpc.RpcError) as failed:
            _find_commit(address, relative_path)
        # A streaming read too.
        clone = run_git("clone", "-q", url(address, relative_path), str(tmp_path / "clone"))
    finally:
        for node in outvoted.nodes:
            node.resume()
    # Not the client's deadline: the last resort's own bound ended the read.
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value.details()
    assert "did not answer" in (failed.value.details() or "")
    assert clone.returncode != 0
    assert "did not answer" in clone.stderr, clone.stderr
