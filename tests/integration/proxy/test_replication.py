"""A secondary whose disk disagrees is outvoted, marked outdated and repaired."""

from __future__ import annotations

from pathlib import Path

from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.node import wait_for
from tests.integration.proxy import helpers

OUTDATED = "gitquorum_transactions_total"
JOBS = "gitquorum_replication_latency_seconds_count"


def _jobs_done(cluster: Cluster) -> float:
    return sum(
        helpers.sample(helpers.scrape(p.metrics_port), JOBS, type="update", result="ok")
        for p in cluster.proxies
    )


def test_disagreeing_secondary_is_outvoted_and_repaired(
    healthy: Cluster, source: Path, relative_path: str, tmp_path: Path
) -> None:
    address = healthy.proxies[0].address
    helpers.create(address, relative_path)
    helpers.push(address, relative_path, source, "main", "feature")
    helpers.wait_converged(address, relative_path)
    # Let the verifier see the replicas first: once verified it leaves them
    # alone, so the disagreement below is found by the vote.
    wait_for(
        lambda: all(
            r.HasField("verified_at") for r in helpers.metadata(address, relative_path).replicas
        ),
        30,
        0.2,
        "the verifier to check every replica",
    )
    meta = helpers.metadata(address, relative_path)
    secondary = sorted(r.storage for r in meta.replicas if r.storage != meta.primary)[0]
    head = gitrepo.git("rev-parse", "main", cwd=source).strip()

    work = tmp_path / "work"
    helpers.ok(helpers.run_git("clone", "-q", helpers.url(address, relative_path), str(work)))
    new = helpers.commit(work, "outvoted.txt")

    # The secondary's disk disagrees: main points elsewhere, behind the proxy's back.
    replica = healthy.replica_dir(secondary, meta.replica_path)
    gitrepo.git("update-ref", "refs/heads/main", "main~2", cwd=replica)
    text = helpers.scrape(healthy.proxies[0].metrics_port)
    outdated_before = helpers.sample(text, OUTDATED, outcome="secondaries-outdated")
    jobs_before = _jobs_done(healthy)

    helpers.ok(helpers.run_git("push", "origin", "main", cwd=work))  # acknowledged

    text = helpers.scrape(healthy.proxies[0].metrics_port)
    assert helpers.sample(text, OUTDATED, outcome="secondaries-outdated") == outdated_before + 1
    after = helpers.metadata(address, relative_path)
    assert after.generation == meta.generation + 1
    assert after.primary == meta.primary
    gens = helpers.generations(after)
    # The primary and the agreeing secondary took the write; the outvoted one
    # did not (unless a replication job already repaired it).
    assert all(g == after.generation for n, g in gens.items() if n != secondary)
    assert gens[secondary] in (meta.generation, after.generation)
    # Reads never reach the outdated replica: every read sees the new commit.
    for _ in range(10):
        out = helpers.ok(helpers.run_git("ls-remote", helpers.url(address, relative_path), "main"))
        assert out.stdout.split()[0] == new

    repaired = helpers.wait_converged(address, relative_path)
    assert repaired.meta.generation == after.generation
    assert _jobs_done(healthy) >= jobs_before + 1
    for node, refs in helpers.replica_refs(healthy, address, relative_path).items():
        assert refs["refs/heads/main"] == new, node
        assert refs["refs/heads/feature"] == gitrepo.refs(source)["refs/heads/feature"], node
    assert gitrepo.git("rev-parse", f"{new}^", cwd=replica).strip() == head
