"""Nodes down during writes: repaired after they return, or reported as data loss.

These tests stop nodes, so they run on the module's own cluster (``faulty``),
restored before each test.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from gitquorum.gitaly import commit_pb2, commit_pb2_grpc, praefect_pb2, praefect_pb2_grpc
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.integration.proxy import helpers
from tests.integration.proxy.helpers import repository


def _dataloss(address: str, partially: bool) -> list[praefect_pb2.DatalossResponse.Repository]:
    with grpc.insecure_channel(address) as channel:
        pages = praefect_pb2_grpc.PraefectInfoServiceStub(channel).Dataloss(
            praefect_pb2.DatalossRequest(
                virtual_storage="default", include_partially_replicated=partially
            ),
            timeout=10,
        )
        return [r for page in pages for r in page.repositories]


def _pushed(cluster: Cluster, source: Path, relative_path: str, tmp_path: Path) -> Path:
    """A repository on every node, and a working copy of it."""
    address = cluster.proxies[0].address
    helpers.create(address, relative_path)
    helpers.push(address, relative_path, source, "main", "feature")
    helpers.wait_converged(address, relative_path)
    work = tmp_path / "work"
    helpers.ok(helpers.run_git("clone", "-q", helpers.url(address, relative_path), str(work)))
    return work


def test_node_down_during_writes_catches_up(
    faulty: Cluster, source: Path, relative_path: str, tmp_path: Path
) -> None:
    address = faulty.proxies[0].address
    work = _pushed(faulty, source, relative_path, tmp_path)
    start = helpers.metadata(address, relative_path)
    down = sorted(n.name for n in faulty.nodes if n.name != start.primary)[0]
    faulty.node(down).terminate()
    helpers.wait_unhealthy(faulty, down)

    acknowledged = []
    for i in range(3):
        acknowledged.append(helpers.commit(work, f"while-down-{i}.txt"))
        helpers.ok(helpers.run_git("push", "origin", "main", cwd=work))
    helpers.ok(helpers.run_git("push", "origin", "HEAD:refs/heads/made-while-down", cwd=work))

    meta = helpers.metadata(address, relative_path)
    assert meta.generation == start.generation + 4
    gens = helpers.generations(meta)
    assert gens[down] == start.generation
    assert all(g == meta.generation for n, g in gens.items() if n != down)
    (entry,) = [r for r in _dataloss(address, partially=True) if r.relative_path == relative_path]
    assert not entry.unavailable
    behind = {s.name: s.behind_by for s in entry.storages}
    assert behind[down] == 4
    assert not _dataloss(address, partially=False)

    faulty.node(down).start()  # same address
    helpers.wait_all_healthy(faulty)
    repaired = helpers.wait_converged(address, relative_path)
    assert repaired.meta.generation == meta.generation
    refs = helpers.replica_refs(faulty, address, relative_path)[down]
    assert refs["refs/heads/main"] == acknowledged[-1]
    assert refs["refs/heads/made-while-down"] == acknowledged[-1]
    assert _dataloss(address, partially=True) == []


def test_no_up_to_date_replica_is_reported_and_never_served_stale(
    faulty: Cluster, source: Path, relative_path: str, tmp_path: Path
) -> None:
    """RF 3; the two secondaries stop, the primary takes a write alone, then the
    primary stops and the secondaries return: no healthy replica holds the
    latest write, so the repository is unavailable (Dataloss lists it) and reads
    fail instead of serving the stale replicas. The primary's return repairs it."""
    address = faulty.proxies[0].address
    work = _pushed(faulty, source, relative_path, tmp_path)
    start = helpers.metadata(address, relative_path)
    primary = start.primary
    others = [n.name for n in faulty.nodes if n.name != primary]
    for name in others:
        faulty.node(name).terminate()
    for name in others:
        helpers.wait_unhealthy(faulty, name)

    latest = helpers.commit(work, "primary-only.txt")
    helpers.ok(helpers.run_git("push", "origin", "main", cwd=work))
    assert helpers.generations(helpers.metadata(address, relative_path))[primary] == (
        start.generation + 1
    )

    faulty.node(primary).terminate()
    for name in others:
        faulty.node(name).start()
    helpers.wait_unhealthy(faulty, primary)
    for name in others:
        helpers.wait_healthy(faulty, name)

    (entry,) = [r for r in _dataloss(address, partially=False) if r.relative_path == relative_path]
    assert entry.unavailable
    storages = {s.name: s for s in entry.storages}
    assert storages[primary].behind_by == 0 and not storages[primary].healthy
    assert all(storages[n].behind_by == 1 and storages[n].healthy for n in others)
    assert not any(s.valid_primary for s in entry.storages)

    # Reads and writes fail rather than serve or build on the stale replicas.
    proc = helpers.run_git("ls-remote", helpers.url(address, relative_path), "main")
    assert proc.returncode != 0
    with grpc.insecure_channel(address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            commit_pb2_grpc.CommitServiceStub(channel).FindCommit(
                commit_pb2.FindCommitRequest(
                    repository=repository(relative_path), revision=b"main"
                ),
                timeout=10,
            )
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert helpers.metadata(address, relative_path).primary in (primary, "")

    faulty.node(primary).start()
    helpers.wait_all_healthy(faulty)
    helpers.wait_converged(address, relative_path)
    for node, refs in helpers.replica_refs(faulty, address, relative_path).items():
        assert refs["refs/heads/main"] == latest, node
    assert _dataloss(address, partially=True) == []
    assert gitrepo.git("rev-parse", "main", cwd=work).strip() == latest
