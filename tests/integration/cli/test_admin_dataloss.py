"""dataloss and accept-dataloss after the only up-to-date replica is destroyed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.node import wait_for
from tests.integration.cli.ops import (
    cli,
    generations,
    healthy,
    metadata,
    node_checksum,
    seed,
    write_ref,
)

PATH = "lost/project.git"


@pytest.fixture
def lossy(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path / "cluster", proxies_count=1).start()
    try:
        yield cluster
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(cluster.log_tail())
        cluster.close()


def test_accept_dataloss_on_an_outdated_replica_restores_writes_and_repairs(
    lossy: Cluster, tmp_path: Path
) -> None:
    cluster = lossy
    source = gitrepo.make_repo(tmp_path / "source")
    head, parent = gitrepo.git("rev-parse", "main", "main~1", cwd=source).split()
    seed(cluster, PATH, source, tmp_path / "scratch")
    meta = metadata(cluster, PATH)
    primary = meta.primary
    first, second = sorted(r.storage for r in meta.replicas if r.storage != primary)

    # Only the primary takes the next write.
    for name in (first, second):
        cluster.node(name).kill()
    wait_for(lambda: healthy(cluster, PATH) == {primary}, 20, what="secondaries unhealthy")
    with grpc.insecure_channel(cluster.proxies[0].address) as channel:
        write_ref(channel, PATH, "refs/heads/only-on-primary", parent)
    assert generations(cluster, PATH) == {primary: 1, first: 0, second: 0}
    # While the repository is available, accepting data loss from a stale replica is refused.
    refused = cli(
        cluster, "accept-dataloss", "--repository", PATH, "--authoritative-storage", first
    )
    assert refused.code == 1 and "--force" in refused.err
    assert metadata(cluster, PATH).primary == primary

    # The primary's node dies with its disk; the stale nodes come back.
    cluster.node(primary).kill()
    shutil.rmtree(cluster.node(primary).storage_path)
    for name in (first, second):
        cluster.node(name).start()
    wait_for(lambda: healthy(cluster, PATH) == {first, second}, 30, what="stale nodes healthy")

    report = cli(cluster, "dataloss", "--json")
    assert report.code == 1, report
    (vs,) = report.json()["virtual_storages"]
    (entry,) = vs["repositories"]
    assert entry["relative_path"] == PATH and entry["unavailable"] is True
    behind = {r["node"]: r["behind_by"] for r in entry["replicas"]}
    assert behind == {primary: 0, first: 1, second: 1}
    text = cli(cluster, "dataloss")
    assert f"{PATH} (unavailable)" in text.out and "accept-dataloss" in text.err
    with grpc.insecure_channel(cluster.proxies[0].address) as channel:
        with pytest.raises(grpc.RpcError) as failed:
            write_ref(channel, PATH, "refs/heads/refused", head)
        assert failed.value.code() is grpc.StatusCode.UNAVAILABLE

    accepted = cli(
        cluster, "accept-dataloss", "--repository", PATH, "--authoritative-storage", first, "--json"
    )
    assert accepted.code == 0, accepted
    data = accepted.json()
    assert data["primary"] == first and data["generation"] == 2
    assert data["discarded_generations"] == 1 and data["to_repair"] == sorted({primary, second})

    # Writes work again, and the other replicas are rebuilt from the authoritative one.
    with grpc.insecure_channel(cluster.proxies[0].address) as channel:
        write_ref(channel, PATH, "refs/heads/after-recovery", head)
    wait_for(
        lambda: generations(cluster, PATH)[second] == metadata(cluster, PATH).generation,
        30,
        what="the other stale replica to be repaired",
    )
    cluster.node(primary).start()
    wait_for(
        lambda: set(generations(cluster, PATH).values()) == {metadata(cluster, PATH).generation},
        40,
        what="the wiped node's replica to be rebuilt",
    )
    final = metadata(cluster, PATH)
    checksums = {node_checksum(cluster, r.storage, final.replica_path) for r in final.replicas}
    assert len(checksums) == 1
    for r in final.replicas:
        refs = gitrepo.refs(cluster.replica_dir(r.storage, final.replica_path))
        assert refs["refs/heads/after-recovery"] == head
        # The write only the destroyed replica had is gone, as accepted.
        assert "refs/heads/only-on-primary" not in refs
    clean = cli(cluster, "dataloss", "--partially-unavailable")
    assert clean.code == 0 and "no unavailable or partially replicated repositories" in clean.out
