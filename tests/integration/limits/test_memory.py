"""Memory stays bounded while a ~200 MB repository is pushed and cloned through the proxy.

The repository is 200 MB of incompressible data, so its pack is as large. A
proxy or node that held a pack (or a large part of it) in memory would peak
far above the bound; streaming keeps the peak resident set (VmHWM, read from
/proc) of the proxy and of every node to its baseline plus buffers. The
figures are printed with ``-s``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.integration.limits import procs
from tests.integration.proxy import helpers

SIZE_MB = 200
# Generous: a process holding the pack would need more than SIZE_MB on top
# of its ~60-100 MB baseline.
BOUND_MB = 300


@pytest.fixture
def big_cluster(tmp_path: Path) -> Cluster:
    # Two nodes: the push still fans out (the proxy streams to both at once),
    # at two thirds of the CPU three would cost on a small test machine.
    cluster = Cluster(
        tmp_path / "cluster",
        nodes_count=2,
        replication_factor=2,
        # A 200 MB pack takes a while to index on a busy machine: don't drop a
        # slow secondary for lagging a few seconds behind the primary.
        proxy_settings={"write_timeout": "60s", "vote_timeout": "60s"},
    ).start()
    try:
        yield cluster  # type: ignore[misc]
    finally:
        cluster.close()


def _peaks(cluster: Cluster) -> dict[str, float]:
    found = {}
    for proc in [*cluster.proxies, *cluster.nodes]:
        assert proc.proc is not None
        found[proc.name] = round(procs.peak_rss_mb(proc.proc.pid), 1)
    return found


def test_push_and_clone_200mb_in_bounded_memory(big_cluster: Cluster, tmp_path: Path) -> None:
    source = tmp_path / "source"
    gitrepo.git("init", "-q", "-b", "main", str(source))
    # Random data does not compress: storing it as is (and not searching
    # deltas between the blobs) keeps the client's own work out of the timing.
    gitrepo.git("config", "core.compression", "0", cwd=source)
    gitrepo.git("config", "core.bigFileThreshold", "1m", cwd=source)
    # One blob: two large blobs would cost the node's pack-objects a long
    # delta search between them on every clone, which measures nothing here.
    with open(source / "blob.bin", "wb") as blob:
        for _ in range(SIZE_MB // 10):
            blob.write(os.urandom(10 * 1024 * 1024))
    gitrepo.git("add", "-A", cwd=source)
    gitrepo.git("commit", "-q", "-m", "200 MB of random data", cwd=source)
    head = gitrepo.git("rev-parse", "HEAD", cwd=source).strip()

    address = big_cluster.proxies[0].address
    relative = "limits/big.git"
    helpers.create(address, relative)
    before = _peaks(big_cluster)
    started = time.monotonic()
    helpers.push(address, relative, source, "main")
    pushed = time.monotonic()
    clone = tmp_path / "clone"
    helpers.ok(helpers.run_git("clone", "-q", helpers.url(address, relative), str(clone)))
    cloned = time.monotonic()
    after = _peaks(big_cluster)
    print(
        f"\n200 MB push {pushed - started:.1f}s, clone {cloned - pushed:.1f}s; "
        f"peak RSS (VmHWM, MB) before {before}, after {after}"
    )
    assert gitrepo.git("rev-parse", "HEAD", cwd=clone).strip() == head
    pack_mb = sum(p.stat().st_size for p in (clone / ".git" / "objects" / "pack").iterdir())
    assert pack_mb / 1024 / 1024 > SIZE_MB * 0.95  # really a 200 MB transfer
    for name, peak in after.items():
        assert peak < BOUND_MB, f"{name} peaked at {peak} MB"
    # Every replica received the push (the fan-out streamed to all of them).
    helpers.wait_converged(address, relative, nodes=2, timeout=120)
