"""A write abandoned by a proxy that died mid-write, while the third replica was
outdated, does not leave the repository waiting for an operator.

The interleaving the fault suite found (docs/reliability.md): with one of three
replicas outdated, a write goes to the primary and one secondary, and the
primary's vote alone decides it. Here the secondary is paused so it cannot
vote, the primary commits, and the proxy is killed before it records any
outcome: both replicas stay recorded up to date at one generation, and only the
primary holds the write, which nobody acknowledged. Two up-to-date replicas
that disagree have no majority; without knowing that an unfinished write
explains the difference, the verifier cannot tell it from a disk that lost
acknowledged writes and leaves the repository in conflict — and the third
replica, whose repair needs a source the verifier vouches for, outdated.
"""

from __future__ import annotations

import json
import subprocess
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
    git_env,
    push,
    replica_dirs,
    replica_refs,
    samples,
    scrape,
    url,
    wait_all_healthy,
    wait_converged,
    wait_unhealthy,
)

SETTINGS: dict[str, Any] = {
    "replication": {"reconcile_interval": "1s", "verify_interval": "1s"},
    # Slow health checks: the paused secondary is not found unhealthy (and
    # dropped from the write, whose outcome would then be recorded) before the
    # proxy is killed. Nodes that refuse connections are still seen at once.
    "health": {"interval": "10s", "timeout": "5s"},
}
SETTLED = "replicas differing by an unfinished write settled"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("abandoned")
    started = Cluster(base, nodes_count=3, proxies_count=2, proxy_settings=SETTINGS).start()
    with started.reporting():
        yield started


def _consensus(metrics_port: int) -> set[str]:
    text = scrape(metrics_port)
    return {
        dict(k)["storage"]
        for k, v in samples(text, "gitquorum_node_healthy").items()
        if dict(k).get("view") == "consensus" and v == 1.0
    }


def _settlements(cluster: Cluster) -> list[dict[str, Any]]:
    found = []
    for proxy in cluster.proxies:
        for line in proxy.log_path.read_text(errors="replace").splitlines():
            if SETTLED in line:
                found.append(json.loads(line))
    return found


def test_a_write_abandoned_by_a_dead_proxy_is_settled(cluster: Cluster, tmp_path: Path) -> None:
    wait_all_healthy(cluster)
    survivor, victim = cluster.proxies[0], cluster.proxies[1]
    path = "abandoned/dead-proxy.git"
    work = tmp_path / "work"
    create(survivor.address, path)
    gitrepo.git("init", "-q", "-b", "main", str(work), cwd=tmp_path)
    commit(work, "a.txt")
    push(survivor.address, path, work, "main")
    meta = wait_converged(survivor.address, path).meta
    primary = meta.primary
    secondary, outdated = sorted(r.storage for r in meta.replicas if r.storage != primary)

    # The third replica falls behind an acknowledged write and stays down.
    cluster.node(outdated).terminate()
    wait_unhealthy(cluster, outdated)
    acknowledged = commit(work, "b.txt")
    push(survivor.address, path, work, "main")

    # The secondary cannot vote; the primary's vote alone commits the write.
    abandoned = commit(work, "c.txt")
    dirs = replica_dirs(cluster, survivor.address, path)
    cluster.node(secondary).pause()
    client = subprocess.Popen(
        ["git", "push", url(victim.address, path), f"{abandoned}:refs/heads/abandoned"],
        cwd=work,
        env=git_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: "refs/heads/abandoned" in gitrepo.refs(dirs[primary]),
            30,
            0.01,
            "the primary to commit the write",
        )
        # Before the secondary's leg ends: nothing about this write is recorded.
        victim.kill()
    finally:
        cluster.node(secondary).resume()
        client.wait(timeout=60)
    assert client.returncode != 0  # the write was never acknowledged
    # The verifier settles the two up-to-date replicas once the dead proxy's
    # write is over (its membership gone). The third replica stays down until
    # then: repaired earlier from one side, it would make a majority instead.
    lines = wait_for(
        lambda: [s for s in _settlements(cluster) if s.get("relative_path") == path],
        60,
        0.1,
        "the verifier's settlement line",
    )
    cluster.node(outdated).start()
    wait_for(
        lambda: outdated in _consensus(survivor.metrics_port),
        30,
        0.1,
        f"{outdated} healthy again by the surviving proxy",
    )

    # Every replica converges, the acknowledged write kept, without an operator.
    after = wait_converged(survivor.address, path, timeout=60).meta
    refs = replica_refs(cluster, survivor.address, path)
    assert all(r["refs/heads/main"] == acknowledged for r in refs.values())
    assert len({json.dumps(r, sort_keys=True) for r in refs.values()}) == 1
    report = cli(cluster, "dataloss", "--json").json()
    (vs,) = report["virtual_storages"]
    assert not [r for r in vs["repositories"] if r["relative_path"] == path]
    # The verifier said why it chose a side.
    (settled,) = lines
    assert settled["reference"] == primary
    assert settled["demoted"] == [secondary]
    assert after.generation >= meta.generation + 1
