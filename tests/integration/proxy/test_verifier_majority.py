"""The verifier settles a mismatch by majority, against real etcd, nodes and git.

A replica's refs are rolled back on its node's disk while the node is down
(as a power loss or a restored backup would leave them), behind the record's
back: the record still says the replica is up to date. The verifier must find
that replica, demote it and repair it from the others, never the other way
round, whether it is the primary or a secondary; with two replicas that
disagree it must overwrite nothing and report the repository.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.node import wait_for
from tests.integration.cli.ops import cli
from tests.integration.proxy.helpers import (
    commit,
    create,
    metadata,
    push,
    replica_refs,
    sample,
    scrape,
    wait_all_healthy,
    wait_converged,
    wait_healthy,
    wait_unhealthy,
)

SETTINGS: dict[str, Any] = {
    # The verifier checks every replica every second (once a pass comes round).
    "replication": {"reconcile_interval": "1s", "verify_interval": "1s"},
}
DEMOTED = "verification failed: replicas differing from the majority demoted"


def _start(base: Path, nodes: int) -> Cluster:
    return Cluster(
        base, nodes_count=nodes, replication_factor=nodes, proxy_settings=SETTINGS
    ).start()


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with _start(tmp_path_factory.mktemp("verify-three"), 3).reporting() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with _start(tmp_path_factory.mktemp("verify-two"), 2).reporting() as cluster:
        yield cluster


def _acknowledged(cluster: Cluster, path: str, work: Path) -> tuple[str, str]:
    """Create ``path`` and push two commits of main through the proxy, each
    acknowledged; returns (older, acknowledged head)."""
    address = cluster.proxies[0].address
    create(address, path)
    gitrepo.git("init", "-q", "-b", "main", str(work), cwd=work.parent)
    older = commit(work, "a.txt")
    push(address, path, work, "main")
    head = commit(work, "b.txt")
    push(address, path, work, "main")
    return older, head


def _roll_back(cluster: Cluster, node: str, path: str, older: str) -> None:
    """Stop ``node``, move its replica's main back to ``older`` on disk, start it."""
    address = cluster.proxies[0].address
    replica = cluster.replica_dir(node, metadata(address, path).replica_path)
    cluster.node(node).terminate()
    wait_unhealthy(cluster, node)
    gitrepo.git("update-ref", "refs/heads/main", older, cwd=replica)
    cluster.node(node).start()
    wait_healthy(cluster, node)


def _demotions(cluster: Cluster) -> list[dict[str, Any]]:
    """The verifier's demotion log lines of every proxy, oldest first."""
    found = []
    for proxy in cluster.proxies:
        for line in proxy.log_path.read_text(errors="replace").splitlines():
            if DEMOTED in line:
                found.append(json.loads(line))
    return found


def _every_replica_holds(cluster: Cluster, path: str, head: str) -> bool:
    refs = replica_refs(cluster, cluster.proxies[0].address, path)
    return len(refs) == len(cluster.nodes) and all(
        r.get("refs/heads/main") == head for r in refs.values()
    )


@pytest.mark.parametrize("role", ["primary", "secondary"])
def test_the_rolled_back_replica_is_the_one_repaired(
    three: Cluster, tmp_path: Path, role: str
) -> None:
    cluster = three
    wait_all_healthy(cluster)
    address = cluster.proxies[0].address
    path = f"verify/{role}.git"
    older, head = _acknowledged(cluster, path, tmp_path / "work")
    before = wait_converged(address, path).meta
    victim = (
        before.primary
        if role == "primary"
        else next(r.storage for r in before.replicas if r.storage != before.primary)
    )
    others = {r.storage for r in before.replicas} - {victim}
    seen = len(_demotions(cluster))
    # Paused, the primary stays where it is while its node is down (no
    # failover), and the verifier waits: the rolled-back replica comes back
    # still recorded up to date, and still primary in the first case.
    assert cli(cluster, "pause", "--reason", "roll back a replica").code == 0
    try:
        _roll_back(cluster, victim, path, older)
        assert metadata(address, path).primary == before.primary
    finally:
        assert cli(cluster, "resume").code == 0
    # The verifier finds the mismatch and the repair brings the acknowledged
    # head back to the rolled-back replica: no acknowledged write is lost.
    wait_for(
        lambda: _every_replica_holds(cluster, path, head),
        90,
        0.2,
        "the acknowledged head on every replica",
    )
    after = wait_converged(address, path, timeout=60).meta
    # It was the rolled-back replica (only it) that was demoted and repaired,
    # from the replicas that kept the write.
    demoted = _demotions(cluster)[seen:]
    assert [d["demoted"] for d in demoted] == [[victim]]
    assert set(demoted[0]["majority"]) == others
    assert set(demoted[0]["sources"].values()) <= others
    assert after.generation == before.generation
    if role == "primary":
        assert after.primary in others and demoted[0]["old_primary"] == victim
    else:
        assert after.primary == before.primary
    # Nothing was held against the replicas that kept the write afterwards either.
    assert _demotions(cluster)[seen:] == demoted
    # What the repair changed: the one reference the rollback moved.
    assert demoted[0]["differing_refs"] == ["refs/heads/main"]
    assert demoted[0]["differing_refs_count"] == 1
    # The verdict is in the history, stored with the demotion itself.
    shown = cli(cluster, "history", "--repository", path, "--json")
    assert shown.code == 0
    (verdict,) = [e for e in json.loads(shown.out)["events"] if e["kind"] == "verdict"]
    assert verdict["reason"] == "majority" and verdict["details"]["demoted"] == [victim]
    assert verdict["details"]["differing_refs"] == ["refs/heads/main"]


def test_two_replicas_that_disagree_are_reported_and_left_alone(
    two: Cluster, tmp_path: Path
) -> None:
    cluster = two
    wait_all_healthy(cluster)
    address = cluster.proxies[0].address
    path = "verify/two.git"
    older, head = _acknowledged(cluster, path, tmp_path / "work")
    before = wait_converged(address, path, nodes=2).meta
    victim = next(r.storage for r in before.replicas if r.storage != before.primary)
    _roll_back(cluster, victim, path, older)

    def reported() -> dict[str, Any] | None:
        report = cli(cluster, "dataloss", "--json")
        (vs,) = report.json()["virtual_storages"]
        return next((r for r in vs["repositories"] if r["relative_path"] == path), None)

    entry: dict[str, Any] = wait_for(reported, 60, 0.5, "dataloss to list the repository")
    assert sorted(entry["conflict"]) == sorted(r.storage for r in before.replicas)
    assert entry["unavailable"] is False
    assert cli(cluster, "dataloss").code == 1

    def conflicts() -> float:
        text = scrape(cluster.proxies[0].metrics_port)
        return sample(text, "gitquorum_verification_conflicts", virtual_storage="default")

    # The leader exports the cluster-wide gauges every 2 s.
    wait_for(lambda: conflicts() == 1, 10, 0.2, "the conflicts gauge to read 1")
    # Nothing was overwritten or demoted: both replicas keep what they hold
    # across further verifier passes (each checks both replicas again).
    since = time.time()

    def checked_again() -> bool:
        replicas = metadata(address, path).replicas
        return all(r.verified_at.ToSeconds() > since + 1 for r in replicas)

    wait_for(checked_again, 30, 0.5, "the verifier to check both replicas again")
    assert reported() is not None
    refs = replica_refs(cluster, address, path)
    assert refs[before.primary]["refs/heads/main"] == head
    assert refs[victim]["refs/heads/main"] == older
    meta = metadata(address, path)
    assert {r.storage: r.generation for r in meta.replicas} == {
        r.storage: before.generation for r in before.replicas
    }
    assert not _demotions(cluster)
    # The operator keeps the replica holding the acknowledged head.
    kept = cli(
        cluster, "accept-dataloss", "--repository", path, "--authoritative-storage", before.primary
    )
    assert kept.code == 0, kept
    wait_converged(address, path, nodes=2, timeout=60)
    wait_for(lambda: _every_replica_holds(cluster, path, head), 30, 0.2, "the head everywhere")
    assert reported() is None
    wait_for(lambda: conflicts() == 0, 10, 0.2, "the conflicts gauge to read 0")
