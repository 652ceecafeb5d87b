"""Each disk nemesis does what it claims, against real nodes, git and etcd.

One cluster (one etcd member, three nodes, one proxy, replication factor 3)
serves every test of the module; each test heals its fault before it ends.

* **full**: the node's filesystem has no byte left; a write whose primary is
  that node is refused and lands nowhere, a write for which it is a secondary
  is acknowledged by the others and leaves it outdated; no lock file stays;
  once the filler is gone the node takes writes again and catches up.
* **slow**: every fsync of that node's git sleeps, so its writes take longer;
  the other nodes are not slowed.
* **rolled back / wiped**: while the node is down its replica misses
  acknowledged writes (or is gone); after it restarts the verifier puts the
  replica back in line with the others.
* **primary rolled back**: the repository's primary comes back at once from
  a backup without acknowledged writes; the verifier settles by majority, so
  every replica ends with every acknowledged write (none is lost to a repair
  copying the primary's old state over the others).
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from gitquorum.cluster.decisions import up_to_date_replicas
from gitquorum.cluster.repositories import RepositoryRecord
from gitquorum.gitaly import repository_pb2, repository_pb2_grpc, shared_pb2
from tests.chaos import checker
from tests.chaos.workload import GIT_SSH, History, Op
from tests.faults import disk
from tests.faults.cluster import FaultCluster
from tests.faults.context import RunContext, until
from tests.harness import gitrepo
from tests.harness.cluster import VIRTUAL_STORAGE

SETTINGS: dict[str, object] = {
    "replication": {"reconcile_interval": "1s", "verify_interval": "2s"},
}
# Proofs that each disk nemesis does what it names: run by make test-long (the
# randomized run of make test uses the same nemeses).
pytestmark = pytest.mark.long

REPOS = 4
SLOW_MS = 300
CONVERGE = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultCluster]:
    base = tmp_path_factory.mktemp("disk-faults")
    source = gitrepo.make_repo(base / "source", commits=2)
    started = FaultCluster(
        base / "cluster",
        etcd_size=1,
        proxies_count=1,
        replication_factor=3,
        proxy_settings=SETTINGS,
    )
    with started.reporting():
        started.start()
        asyncio.run(_seed(started, source, base))
        yield started


async def _seed(cluster: FaultCluster, source: Path, scratch: Path) -> None:
    async with grpc.aio.insecure_channel(cluster.proxies[0].address) as channel:
        for i in range(REPOS):
            await gitrepo.seed(channel, checker.repository(f"disk/r{i}.git"), source, scratch)
    for i in range(REPOS):
        await until(
            lambda i=i: checker.converged(cluster, cluster.proxies[0].address, f"disk/r{i}.git"),
            CONVERGE,
            "the seeded repositories on every node",
        )


def _run(cluster: FaultCluster, repos: list[str], seed: int = 1) -> RunContext:
    return RunContext(cluster, random.Random(seed), repos, History())


def _head(cluster: FaultCluster) -> str:
    return gitrepo.git("rev-parse", "main", cwd=cluster.base.parent / "source").strip()


def _write(cluster: FaultCluster, repo: str, ref: str, oid: str) -> grpc.StatusCode:
    """WriteRef through the proxy; the status code it ends with."""
    with grpc.insecure_channel(cluster.proxies[0].address) as channel:
        try:
            repository_pb2_grpc.RepositoryServiceStub(channel).WriteRef(
                repository_pb2.WriteRefRequest(
                    repository=checker.repository(repo), ref=ref.encode(), revision=oid.encode()
                ),
                timeout=15,
            )
        except grpc.RpcError as exc:
            print(f"WriteRef {ref}: {exc.code()} {exc.details()}")
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def _push(cluster: FaultCluster, repo: str, ref: str) -> subprocess.CompletedProcess[str]:
    """A real git push (over the SSH front end) of a new commit holding 256 KiB of data."""
    clone = cluster.base.parent / "source"
    blob = gitrepo.git("hash-object", "-w", "--stdin", cwd=clone, input=os.urandom(1 << 18))
    tree = gitrepo.git(
        "mktree", cwd=clone, input=f"100644 blob {blob.strip()}\tdata.bin\n".encode()
    )
    commit = gitrepo.git("commit-tree", tree.strip(), "-m", ref, cwd=clone).strip()
    env = {k: v for k, v in os.environ.items() if k not in ("GIT_SSH", "GIT_SSH_VARIANT")}
    env.update(gitrepo.GIT_ENV, GIT_SSH_COMMAND=GIT_SSH, GITQUORUM_STORAGE=VIRTUAL_STORAGE)
    return subprocess.run(
        ["git", "push", "--quiet", f"ssh://{cluster.proxies[0].address}/{repo}", f"{commit}:{ref}"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _leftovers(cluster: FaultCluster, node: str, replica_path: str) -> list[str]:
    """Scratch files a write left in the replica: lock files, quarantines, temporary packs."""
    root = cluster.replica_dir(node, replica_path)
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.name.endswith(".lock") or p.name.startswith(("incoming-", "tmp_", "tmp-"))
    )


def _write_on_node(cluster: FaultCluster, node: str, replica_path: str, ref: str, oid: str) -> None:
    """WriteRef straight to one node (no transaction): what its own git costs."""
    with grpc.insecure_channel(cluster.node(node).address) as channel:
        repository_pb2_grpc.RepositoryServiceStub(channel).WriteRef(
            repository_pb2.WriteRefRequest(
                repository=shared_pb2.Repository(storage_name=node, relative_path=replica_path),
                ref=ref.encode(),
                revision=oid.encode(),
            ),
            timeout=30,
        )


def _disk_refs(cluster: FaultCluster, node: str, replica_path: str) -> dict[str, str]:
    return gitrepo.refs(cluster.replica_dir(node, replica_path))


def _locks(cluster: FaultCluster, node: str, replica_path: str) -> list[str]:
    root = cluster.replica_dir(node, replica_path)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.lock"))


class FullOn(disk.DiskFull):
    """The disk-full nemesis on a node the test names."""

    def __init__(self, node: str) -> None:
        self.node = node

    def pick(self, run: RunContext) -> str:
        return self.node


async def _fill(run: RunContext, node: str) -> tuple[disk.DiskFull, str]:
    nemesis = FullOn(node)
    fault = await nemesis.inject(run)
    # A full disk loses nothing: no replica of it is exempt from the safety checks.
    assert fault.target == node and fault.disk_nodes == () and fault.kind == "disk"
    home = run.cluster.disks.mounts[node]
    assert disk.free_bytes(home) == 0, fault.detail
    with pytest.raises(OSError) as full:
        (run.cluster.disks.storage(node) / "probe").write_bytes(b"x" * 4096)
    assert full.value.errno == errno.ENOSPC
    return nemesis, node


async def test_disk_full_refuses_writes_cleanly_and_heals(cluster: FaultCluster) -> None:
    if not cluster.disks.mounts:
        pytest.skip(cluster.disks.unavailable.get("full", "no small filesystem"))
    repo = "disk/r0.git"
    run = _run(cluster, [repo])
    record = run.record(repo)
    path = record.replica_path
    primary = record.primary
    assert primary is not None
    secondary = next(n for n in record.replica_nodes if n != primary)
    oid = _head(cluster)

    # The primary's disk is full: the write is refused and lands on no replica.
    nemesis, _ = await _fill(run, primary)
    try:
        code = await asyncio.to_thread(_write, cluster, repo, "refs/heads/full-p", oid)
        print(f"write with a full primary: {code}")
        assert code != grpc.StatusCode.OK
        for replica in record.replica_nodes:
            assert "refs/heads/full-p" not in _disk_refs(cluster, replica, path), replica
            assert not _locks(cluster, replica, path), replica
        assert run.record(repo).generation == record.generation
        pushed = await asyncio.to_thread(_push, cluster, repo, "refs/heads/full-push-p")
        print(f"push with a full primary: {pushed.returncode} {pushed.stderr.strip()[-400:]}")
        assert pushed.returncode != 0
        for replica in record.replica_nodes:
            assert "refs/heads/full-push-p" not in _disk_refs(cluster, replica, path), replica
            print(f"{replica} after the refused push: {_leftovers(cluster, replica, path)}")
        assert run.record(repo).generation == record.generation
    finally:
        await nemesis.heal(run)
    assert disk.free_bytes(cluster.disks.mounts[primary]) > 0
    await until(
        lambda: _write(cluster, repo, "refs/heads/full-p", oid) == grpc.StatusCode.OK,
        CONVERGE,
        f"a write with {primary} as primary once its disk is freed",
    )

    # A secondary's disk is full: acknowledged by the others, it is outdated.
    nemesis, _ = await _fill(run, secondary)
    try:
        code = await asyncio.to_thread(_write, cluster, repo, "refs/heads/full-s", oid)
        assert code == grpc.StatusCode.OK
        after = run.record(repo)
        assert "refs/heads/full-s" not in _disk_refs(cluster, secondary, path)
        assert after.replica_generation(secondary) < after.generation, after
        assert after.replica_generation(primary) == after.generation, after
        assert not _locks(cluster, secondary, path)
        pushed = await asyncio.to_thread(_push, cluster, repo, "refs/heads/full-push-s")
        print(f"push with a full secondary: {pushed.returncode} {pushed.stderr.strip()[-400:]}")
        assert pushed.returncode == 0
        assert "refs/heads/full-push-s" not in _disk_refs(cluster, secondary, path)
        print(f"{secondary} after the push: {_leftovers(cluster, secondary, path)}")
    finally:
        await nemesis.heal(run)

    # Healed: the secondary catches up, no lock file anywhere.
    final = await until(
        lambda: checker.converged(cluster, cluster.proxies[0].address, repo),
        CONVERGE,
        f"{repo} converged after the disk was freed",
    )
    for replica in final.replicas:
        assert not _locks(cluster, replica.node, path), f"lock files on {replica.node}"
        assert {"refs/heads/full-p", "refs/heads/full-s"} <= set(
            _disk_refs(cluster, replica.node, path)
        )
    # Copies refused for want of space left nothing behind on the node.
    scratch = cluster.disks.storage(secondary) / "+gitquorum"
    kept = sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*"))
    print(f"{secondary}'s +gitquorum: {kept}")
    assert not [p for p in scratch.rglob("*.tmp")], "scratch files of failed writes"


class FixedSlowDisk(disk.SlowDisk):
    delays_ms = (SLOW_MS,)


async def test_slow_disk_delays_only_that_nodes_fsyncs(cluster: FaultCluster) -> None:
    if cluster.disks.control is None:
        pytest.skip(cluster.disks.unavailable.get("slow", "no slow-fsync shim"))
    run = _run(cluster, [f"disk/r{i}.git" for i in range(REPOS)])
    record = run.record("disk/r0.git")
    oid = _head(cluster)

    def timed(node: str, ref: str) -> float:
        started = time.monotonic()
        _write_on_node(cluster, node, record.replica_path, ref, oid)
        return time.monotonic() - started

    nemesis = FixedSlowDisk()
    fault = await nemesis.inject(run)
    node = fault.target
    other = next(n.name for n in cluster.nodes if n.name != node)
    try:
        # A slow disk loses nothing: nothing of it is exempt from the safety checks.
        assert fault.disk_nodes == () and "+300 ms" in fault.detail
        slow = await asyncio.to_thread(timed, node, f"refs/heads/slow-{node}")
        fast = await asyncio.to_thread(timed, other, f"refs/heads/slow-{node}")
        print(f"WriteRef on the slow node {slow:.2f}s, on {other} {fast:.2f}s")
        # A ref update fsyncs at least the ref file (core.fsync=reference).
        assert slow >= SLOW_MS / 1000
        assert fast < SLOW_MS / 1000
        # Writes through the proxy still go through.
        code = await asyncio.to_thread(_write, cluster, "disk/r0.git", "refs/heads/slow", oid)
        assert code == grpc.StatusCode.OK
    finally:
        await nemesis.heal(run)
    healed = await asyncio.to_thread(timed, node, "refs/heads/slow-healed")
    assert healed < SLOW_MS / 1000, healed
    # The same direct writes on every node leave the replicas equal.
    for name in sorted({n.name for n in cluster.nodes} - {node}):
        await asyncio.to_thread(timed, name, "refs/heads/slow-healed")
        if name != other:
            await asyncio.to_thread(timed, name, f"refs/heads/slow-{node}")
    await until(
        lambda: checker.converged(cluster, cluster.proxies[0].address, "disk/r0.git"),
        CONVERGE,
        "disk/r0.git converged after the slow disk",
    )


async def _writer(
    cluster: FaultCluster,
    run: RunContext,
    repo: str,
    stop: asyncio.Event,
    oid: str,
    quiet: Callable[[], bool] = lambda: False,
) -> None:
    """Acknowledged creates of new refs, recorded in the run's history, until
    ``stop`` is set or ``quiet()`` says no more are wanted."""
    while not stop.is_set() and not quiet():
        ref = f"refs/heads/w/{uuid.uuid4().hex[:8]}"
        op = run.history.add(Op("test", "create", ref, oid, time.monotonic(), repo=repo))
        code = await asyncio.to_thread(_write, cluster, repo, ref, oid)
        op.end = time.monotonic()
        op.outcome = "ok" if code == grpc.StatusCode.OK else "unknown"
        await asyncio.sleep(0.05)


def _acknowledged(run: RunContext) -> set[str]:
    return {o.key for o in run.history.writes("ok")}


class _Observed(disk.ReplicaLoss):
    """A replica-loss nemesis that also reads the damaged replica right after
    the damage, while its node is still down.

    primary-rollback restarts the node before ``inject`` returns, so this is
    the only moment the restored replica can be seen as the backup left it,
    before any write or repair touches it again. It also keeps the record the
    pick was made from and when the backup was taken. Nothing the nemesis does
    changes."""

    # The repository's record read at the pick (what "the primary" meant then).
    picked: RepositoryRecord | None = None
    # When the backup was taken: the nemesis then waits for ``writes_missed``
    # writes acknowledged after it before the power loss.
    backed_up: float | None = None
    # The damaged replica's refs right after the damage; None: no directory.
    damaged_refs: dict[str, str] | None = None

    def _pick(self, run: RunContext) -> tuple[str, str, str]:
        repo, node, replica_path = super()._pick(run)
        self.picked = run.record(repo)
        return repo, node, replica_path

    async def _backup(
        self, run: RunContext, repo: str, node: str, replica_path: str
    ) -> tuple[Path | None, float]:
        taken = await super()._backup(run, repo, node, replica_path)
        self.backed_up = time.monotonic()
        return taken

    def damage(  # type: ignore[override]
        self, disks: disk.Disks, node: str, replica_path: str, snapshot: Path | None
    ) -> None:
        super().damage(disks, node, replica_path, snapshot)
        live = disks.storage(node) / replica_path
        self.damaged_refs = gitrepo.refs(live) if live.is_dir() else None


def _observed(kind: type[disk.ReplicaLoss]) -> _Observed:
    return type(f"Observed{kind.__name__}", (_Observed, kind), {})()  # type: ignore[no-any-return]


LOSS_REPOS = {
    disk.ReplicaRollback: "disk/r1.git",
    disk.ReplicaWipe: "disk/r2.git",
    disk.PrimaryRollback: "disk/r3.git",
}


@pytest.mark.parametrize("kind", list(LOSS_REPOS), ids=lambda kind: kind.name)
async def test_replica_loss_while_down_is_repaired(
    cluster: FaultCluster, kind: type[disk.ReplicaLoss]
) -> None:
    repo = LOSS_REPOS[kind]
    run = _run(cluster, [repo], seed=7)
    oid = _head(cluster)
    stop = asyncio.Event()
    nemesis = _observed(kind)

    def cold() -> bool:
        """Whether the nemesis has the writes it waits for after its backup."""
        if nemesis.backed_up is None:
            return False
        after = [o for o in run.history.writes("ok") if o.start >= nemesis.backed_up]
        return len(after) >= nemesis.writes_missed

    # primary-rollback is meant for a cold repository: a write while the
    # primary is down or just back outdates it in etcd, and the ordinary
    # catch-up repairs it before the verifier has to choose a side. So the
    # writes stop once the backup misses enough of them, before the power loss.
    quiet = cold if kind is disk.PrimaryRollback else (lambda: False)
    writer = asyncio.create_task(_writer(cluster, run, repo, stop, oid, quiet))
    try:
        assert await run.acknowledged(1, 20, repo)
        # The writes stop once the node is down (primary-rollback's before its
        # power loss): the damaged replica then comes back at the generation
        # etcd records for it.
        fault = await nemesis.inject(run)
        stop.set()
        await writer
        node = fault.target
        assert fault.disk_nodes == (node,) and fault.disk_repos == (repo,)
        assert fault.kind == "disk" and fault.power_loss is not None
        picked = nemesis.picked
        assert picked is not None
        path = picked.replica_path
        live = cluster.replica_dir(node, path)
        if kind is disk.PrimaryRollback:
            # The fault must hit the node etcd named the repository's primary
            # when the nemesis chose, the node whose word a repair must not take.
            assert node == picked.primary, f"{node} rolled back, {picked.primary} was primary"
            # Back before inject returns, and down only for the power loss.
            assert cluster.node(node).alive()
            ((down, up),) = fault.nodes_down_during[node]
            assert down == fault.power_loss < up, fault.nodes_down_during
            # Back with etcd still recording it up to date (no write while it
            # was down): only the verifier's checksums can find what it lost,
            # and it has to choose which side to repair.
            after = run.record(repo)
            print(f"{node} down {up - down:.2f}s, then {after.primary} primary: {after}")
            assert node in up_to_date_replicas(after), after
        else:
            assert not cluster.node(node).alive()
        # What the replica lost: writes acknowledged before its power loss that
        # the disk, as the restore (or the wipe) left it, does not hold.
        before_loss = {o.key for o in run.history.writes("ok") if o.end < fault.power_loss}
        if kind is disk.ReplicaWipe:
            assert nemesis.damaged_refs is None and not live.exists()
        else:
            assert nemesis.damaged_refs is not None
            missing = before_loss - set(nemesis.damaged_refs)
            assert missing, "the rolled-back replica holds every acknowledged write"
            print(f"rolled back {node}: {len(missing)} acknowledged refs missing")
    finally:
        stop.set()
        await writer
        await nemesis.heal(run)
    assert cluster.node(node).alive()
    acknowledged = _acknowledged(run)
    # What the checker has to expect: etcd cannot know the disk went back, so
    # the replica may be recorded up to date without the writes until the
    # verifier compares it (reads routed to it meanwhile are stale).
    record = run.record(repo)
    on_disk = set(_disk_refs(cluster, node, path)) if live.is_dir() else set()
    print(
        f"{kind.name}: after the restart {node} is recorded at generation "
        f"{record.replica_generation(node)} of {record.generation} (primary "
        f"{record.primary}), {len(acknowledged - on_disk)} acknowledged refs missing on its disk"
    )

    # The other replicas hold the acknowledged writes; a repair in the wrong
    # direction (the damaged replica's state copied over them) would take
    # some away. Every poll checks that none of them loses a ref it was seen
    # holding.
    others = [n for n in picked.replica_nodes if n != node]
    held: dict[str, set[str]] = {n: set() for n in others}
    lost: dict[str, set[str]] = {}

    def settled() -> object:
        for other in others:
            now = acknowledged & set(_disk_refs(cluster, other, path))
            if held[other] - now:
                lost.setdefault(other, set()).update(held[other] - now)
            held[other] |= now
        return checker.converged(cluster, cluster.proxies[0].address, repo)

    started = time.monotonic()
    final = await until(settled, CONVERGE, f"{repo} converged after {node}'s replica was damaged")
    print(f"{kind.name}: {repo} converged {time.monotonic() - started:.1f}s after the restart")
    assert not lost, f"acknowledged refs removed from the replicas that held them: {lost}"
    # Converged means every replica is equal: they must be equal on the
    # majority's state, the one with every acknowledged write, not on the
    # damaged replica's.
    for replica in sorted(r.node for r in final.replicas if r.assigned):
        gone = acknowledged - set(_disk_refs(cluster, replica, path))
        assert not gone, f"{len(gone)} acknowledged refs missing on {replica}: {sorted(gone)}"
    assert not _locks(cluster, node, path)
