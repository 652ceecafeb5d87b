"""Disk faults of the fault suite's nodes: full, slow, rolled back, wiped.

:class:`Disks` prepares every node's disk before the nodes start:

* **its own small filesystem**: a ``tmpfs`` of ``size_mb`` mounted on
  ``<base>/nodeN`` (the node's storage is ``<base>/nodeN/storage``), so that
  one node's disk can be filled without filling the machine's. Mounting needs
  root (CAP_SYS_ADMIN); without it the storage stays on the ordinary disk and
  :class:`DiskFull` is not applicable (``Disks.unavailable`` says why).
* **a slow-fsync shim**: ``slowdisk.c`` compiled at start with ``cc`` and
  preloaded (``LD_PRELOAD``) into every node, and so into every git it runs.
  ``fsync``, ``fdatasync``, ``sync_file_range`` and ``syncfs`` of a file under
  a path listed in the control file sleep first. The delay is per path, so
  only the node whose storage is listed is slow. Without a C compiler
  :class:`SlowDisk` is not applicable.

Rolling a replica back (or wiping it) needs neither: the node is killed (-9,
a power loss), its replica directory replaced by an older copy (a restore
from backup) or deleted, and the node started again.
"""

from __future__ import annotations

import asyncio
import errno
import math
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from gitquorum.cluster.decisions import up_to_date_replicas
from gitquorum.cluster.repositories import RepositoryRecord
from tests.faults.base import Fault, Nemesis

if TYPE_CHECKING:
    from tests.faults.cluster import FaultCluster
    from tests.faults.context import RunContext

SHIM_SOURCE = Path(__file__).with_name("slowdisk.c")
FILLER = "filler"
SNAPSHOTS = "snapshots"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _skip_locks(directory: str, names: list[str]) -> list[str]:
    # A backup that copied a writer's lock file would restore a reference that
    # stays locked for good: the copy skips them (as a careful backup would).
    return [n for n in names if n.endswith(".lock")]


def _copytree(source: Path, target: Path, ignore) -> None:  # type: ignore[no-untyped-def]
    try:
        shutil.copytree(source, target, symlinks=True, ignore=ignore, dirs_exist_ok=True)
    except shutil.Error as exc:
        # Files git renamed or removed while the copy ran: a live copy misses them.
        vanished = [e for e in exc.args[0] if "No such file" in str(e[-1])]
        if len(vanished) != len(exc.args[0]):
            raise


def copy_replica(source: Path, target: Path) -> None:
    """Copy a live replica: references first, objects after.

    git writes objects before the references that point to them and removes
    objects only after repacking them, so a copy whose objects are taken after
    its references holds every object its references need.
    """

    def first(directory: str, names: list[str]) -> list[str]:
        skipped = _skip_locks(directory, names)
        if Path(directory) == source:
            skipped.append("objects")
        return skipped

    _copytree(source, target, first)
    if (source / "objects").is_dir():
        _copytree(source / "objects", target / "objects", _skip_locks)


@dataclass
class Disks:
    """Every node's disk: a small filesystem to fill, an fsync delay to switch on."""

    size_mb: int = 512
    # node -> the mount point holding its storage (only when mounting worked).
    mounts: dict[str, Path] = field(default_factory=dict)
    shim: Path | None = None
    control: Path | None = None
    # fault ("full", "slow") -> why it cannot be injected on this machine.
    unavailable: dict[str, str] = field(default_factory=dict)
    snapshot_dir: Path | None = None
    _delays: dict[str, int] = field(default_factory=dict)
    _storage: dict[str, Path] = field(default_factory=dict)
    _snapshots: int = 0

    # -- set-up and tear-down -------------------------------------------------------------

    def prepare(self, cluster: FaultCluster) -> None:
        root = cluster.base / "disk"
        root.mkdir(parents=True, exist_ok=True)
        self.snapshot_dir = root / SNAPSHOTS
        self.snapshot_dir.mkdir(exist_ok=True)
        for i in range(1, cluster.nodes_count + 1):
            name = f"node{i}"
            home = cluster.base / name
            self._storage[name] = home / "storage"
            if "full" in self.unavailable:
                continue
            home.mkdir(parents=True, exist_ok=True)
            mounted = _run(
                "mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0755", "tmpfs", str(home)
            )
            if mounted.returncode != 0:
                self.unavailable["full"] = f"cannot mount a tmpfs: {mounted.stderr.strip()}"
                continue
            self.mounts[name] = home
        self._build_shim(cluster, root)

    def _build_shim(self, cluster: FaultCluster, root: Path) -> None:
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            self.unavailable["slow"] = "no C compiler (cc) to build the slow-fsync shim"
            return
        shim = root / "slowdisk.so"
        built = _run(compiler, "-shared", "-fPIC", "-O2", "-o", str(shim), str(SHIM_SOURCE), "-ldl")
        if built.returncode != 0:
            self.unavailable["slow"] = f"building the slow-fsync shim failed: {built.stderr}"
            return
        self.shim = shim
        self.control = root / "slow"
        preload = " ".join(p for p in (str(shim), os.environ.get("LD_PRELOAD", "")) if p)
        cluster.node_env["LD_PRELOAD"] = preload
        cluster.node_env["GITQUORUM_SLOW_DISK"] = str(self.control)

    def close(self, cluster: FaultCluster) -> None:
        self._delays.clear()
        if self.control is not None:
            self.control.unlink(missing_ok=True)
        for home in self.mounts.values():
            if _run("umount", str(home)).returncode != 0:
                # Busy (a process of a failed start still holds a file): detach it.
                _run("umount", "-l", str(home))
        self.mounts.clear()

    # -- full ------------------------------------------------------------------------------

    def storage(self, node: str) -> Path:
        return self._storage[node]

    def fill(self, node: str) -> int:
        """Fill ``node``'s filesystem; returns the bytes left (0 unless something freed some)."""
        home = self.mounts[node]
        fd = os.open(home / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            free = free_bytes(home)
            if free:
                try:
                    os.posix_fallocate(fd, os.fstat(fd).st_size, free)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
            # Then smaller and smaller pieces, up to the last page a reservation missed.
            for size in (1 << 16, 4096, 1):
                piece = b"\0" * size
                while True:
                    try:
                        os.write(fd, piece)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        return free_bytes(home)

    def drain(self, node: str) -> None:
        """Free what ``fill`` took."""
        (self.mounts[node] / FILLER).unlink(missing_ok=True)

    # -- slow ------------------------------------------------------------------------------

    def slow(self, node: str, delay_ms: int) -> None:
        """Every fsync under ``node``'s storage sleeps ``delay_ms`` first (0: none)."""
        assert self.control is not None, self.unavailable.get("slow")
        if delay_ms > 0:
            self._delays[node] = delay_ms
        else:
            self._delays.pop(node, None)
        lines = "".join(f"{ms} {self.storage(n)}/\n" for n, ms in sorted(self._delays.items()))
        scratch = self.control.with_suffix(".new")
        scratch.write_text(lines)
        scratch.replace(self.control)

    # -- rolled back, wiped ----------------------------------------------------------------

    def snapshot(self, node: str, replica_path: str) -> Path:
        """Copy (back up) ``node``'s replica as it is now; returns the copy."""
        assert self.snapshot_dir is not None
        self._snapshots += 1
        target = self.snapshot_dir / f"{self._snapshots}-{node}"
        copy_replica(self.storage(node) / replica_path, target)
        return target

    def restore(self, node: str, replica_path: str, snapshot: Path) -> None:
        """Replace ``node``'s replica by ``snapshot`` (the node must be down)."""
        live = self.storage(node) / replica_path
        shutil.rmtree(live, ignore_errors=True)
        shutil.copytree(snapshot, live, symlinks=True)

    def wipe(self, node: str, replica_path: str) -> None:
        """Delete ``node``'s replica (the node must be down)."""
        shutil.rmtree(self.storage(node) / replica_path, ignore_errors=True)


# -- the nemeses ---------------------------------------------------------------------------


def _disks(run: RunContext) -> Disks:
    return run.cluster.disks


def _live_nodes(run: RunContext) -> list[str]:
    return sorted(n.name for n in run.cluster.nodes if n.alive())


class DiskFull(Nemesis):
    """One node's filesystem filled to the last byte; healed by deleting the filler."""

    name = "disk-full"
    kind = "disk"
    target: str | None = None

    def applicable(self, run: RunContext) -> bool:
        return bool(_disks(run).mounts)

    def pick(self, run: RunContext) -> str:
        return run.rng.choice(sorted(_disks(run).mounts))

    async def inject(self, run: RunContext) -> Fault:
        self.target = await asyncio.to_thread(self.pick, run)
        left = await asyncio.to_thread(_disks(run).fill, self.target)
        # A full disk loses nothing the cluster was told about: no exemption.
        return run.fault(self, self.target, detail=f"{left} bytes left")

    async def heal(self, run: RunContext) -> None:
        if self.target is not None:
            await asyncio.to_thread(_disks(run).drain, self.target)
            self.target = None


class SlowDisk(Nemesis):
    """Every fsync on one node's storage takes ``delay_ms`` longer (git's and the node's)."""

    name = "disk-slow"
    kind = "disk"
    delays_ms: ClassVar[tuple[int, ...]] = (50, 200, 500)
    target: str | None = None

    def applicable(self, run: RunContext) -> bool:
        return _disks(run).control is not None

    def pick(self, run: RunContext) -> str:
        return run.rng.choice(sorted(n.name for n in run.cluster.nodes))

    async def inject(self, run: RunContext) -> Fault:
        self.target = await asyncio.to_thread(self.pick, run)
        delay = run.rng.choice(self.delays_ms)
        await asyncio.to_thread(_disks(run).slow, self.target, delay)
        # A slow disk loses nothing: no exemption.
        return run.fault(self, self.target, detail=f"fsync +{delay} ms")

    async def heal(self, run: RunContext) -> None:
        if self.target is not None:
            await asyncio.to_thread(_disks(run).slow, self.target, 0)
            self.target = None


# How long the record must stay unchanged after a replica loss's kill before
# the damage (the outcomes of the writes the kill cut short recorded), and the
# longest wait for that.
SETTLE_S = 1.0
SETTLE_MAX_S = 5.0


class ReplicaLoss(Nemesis):
    """A power loss on one node, and its replica of one repository comes back damaged.

    The node is killed (-9) and stays down while the fault lasts; heal starts it
    again on the same port. etcd still records the replica at the generation it
    had: only the verifier (checksums against the other up-to-date replicas) can
    find out, so its repairs of that replica are expected (``disk_nodes``).
    """

    kind = "disk"
    # Acknowledged writes of the repository to wait for between the backup and the
    # power loss (bounded by ``lag_s``): what the rolled-back replica will miss.
    writes_missed: ClassVar[int] = 2
    lag_s: ClassVar[float] = 4.0
    target: str | None = None

    def applicable(self, run: RunContext) -> bool:
        return len(_live_nodes(run)) == len(run.cluster.nodes)

    def _pick(self, run: RunContext) -> tuple[str, str, str]:
        """(repository, node, replica path) among replicas present on a live
        node, preferring those whose repository has another up-to-date replica.

        A disk that loses a repository's only up-to-date copy loses what only
        it held: a rollback its last writes (counted apart), a wipe the whole
        repository, which stays unavailable until an operator accepts the
        loss (``gitquorum dataloss``; seed 465149497 wiped a hot repository's
        lone up-to-date replica: stuck for good, by design). The guarantee is
        about the cluster, not about a disk losing the last copy; such a pick
        is made only when no other is possible."""
        records = run.records()
        live = set(_live_nodes(run))
        storage = _disks(run).storage

        def present(record: RepositoryRecord) -> list[str]:
            return [
                n
                for n in record.replica_nodes
                if n in live and (storage(n) / record.replica_path).is_dir()
            ]

        def spare(record: RepositoryRecord, node: str) -> bool:
            return len(up_to_date_replicas(record) - {node}) >= 1

        repos = sorted(r for r in run.repos if r in records)
        pairs = [(r, n) for r in repos for n in present(records[r]) if spare(records[r], n)]
        if pairs:
            repo, node = run.rng.choice(pairs)
        else:
            repo = run.rng.choice(repos)
            node = run.rng.choice(present(records[repo]))
        return repo, node, records[repo].replica_path

    @staticmethod
    def damage(disks: Disks, node: str, replica_path: str, snapshot: Path | None) -> None:
        if snapshot is None:
            disks.wipe(node, replica_path)
        else:
            disks.restore(node, replica_path, snapshot)

    async def _backup(
        self, run: RunContext, repo: str, node: str, replica_path: str
    ) -> tuple[Path | None, float]:
        """(the copy the replica will be restored from, ``Fault.backup_at``).
        A wipe keeps nothing: no copy, and every write acknowledged before the
        power loss may be gone from the replica (``-inf``)."""
        return None, -math.inf

    async def inject(self, run: RunContext) -> Fault:
        repo, node, replica_path = await asyncio.to_thread(self._pick, run)
        self.target = node
        snapshot, backup_at = await self._backup(run, repo, node, replica_path)
        if snapshot is not None:
            missed = await run.acknowledged(self.writes_missed, self.lag_s, repo)
            run.note(f"{self.name}: {repo} on {node}: writes missed by the backup: {missed}")
        # Opened before the kill, as every nemesis does: a read the kill breaks
        # must fall within the fault (opened after, it was counted as a failed
        # read during no fault: seed 71242770).
        fault = run.fault(
            self,
            node,
            detail=f"{repo} ({replica_path})",
            disk_nodes=(node,),
            disk_repos=(repo,),
            nodes_down=(node,),
            backup_at=backup_at,
        )
        fault.power_loss = time.monotonic()  # stamped before: a kill takes a moment
        await asyncio.to_thread(run.node(node).kill)
        if snapshot is None and not await self._still_spare(run, repo, node):
            # The writes in flight at the kill left this replica the only up-to-date
            # one (an outcome that demoted the other; seed 745480504 on f15b172):
            # wiping it now would destroy the last copy and leave the repository
            # stuck until an operator accepts the loss, beyond the guarantee (a
            # rollback of it only loses its last writes, counted apart). The fault
            # stays a plain power loss, and nothing is excused.
            run.note(f"{self.name}: {repo} on {node} became its only up-to-date copy: not damaged")
            fault.detail += ", not damaged: the only up-to-date copy"
            fault.disk_nodes, fault.disk_repos = (), ()
            return fault
        await asyncio.to_thread(self.damage, _disks(run), node, replica_path, snapshot)
        return fault

    @staticmethod
    async def _still_spare(run: RunContext, repo: str, node: str) -> bool:
        """Whether ``repo`` still has an up-to-date replica besides ``node``'s,
        once the writes the kill cut short have recorded their outcomes (the
        record unchanged for ``SETTLE_S``, polled for at most ``SETTLE_MAX_S``);
        True when etcd cannot say (the pick's word stands)."""
        deadline = time.monotonic() + SETTLE_MAX_S
        last: RepositoryRecord | None = None
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            try:
                record: RepositoryRecord | None = await asyncio.to_thread(run.record, repo)
            except Exception:  # etcd unreachable for a moment
                record = None
            if record is not None and record != last:
                last, stable_since = record, time.monotonic()
            elif record is not None and time.monotonic() - stable_since >= SETTLE_S:
                break
            await asyncio.sleep(0.2)
        return last is None or bool(up_to_date_replicas(last) - {node})

    async def heal(self, run: RunContext) -> None:
        if self.target is not None:
            # As the process nemeses: a pooled node (workers) can take more than
            # the default 20 s to serve again under the run's load (the long run
            # with workers of bbc7ae1, seed 739453146, stopped on it).
            await asyncio.to_thread(run.node(self.target).start, 60)
            self.target = None


class ReplicaRollback(ReplicaLoss):
    """The replica restored from a backup taken a few acknowledged writes earlier."""

    name = "replica-rollback"

    async def _backup(
        self, run: RunContext, repo: str, node: str, replica_path: str
    ) -> tuple[Path | None, float]:
        """The copy, and when the records were read just before it was made.

        A replica recorded up to date holds every write acknowledged before the
        record was read, so the copy made after holds them too: ``backup_at``
        is the moment before that read (a write acknowledged between it and the
        copy is counted as possibly missing, never the other way). A replica
        outdated in that record holds an unknown older state (it may catch up
        before the power loss and come back without writes older than the
        copy): ``-inf``, as for a wipe."""
        read_at = time.monotonic()
        try:
            record: RepositoryRecord | None = await asyncio.to_thread(run.record, repo)
        except Exception:  # etcd unreachable for a moment: nothing to vouch for the copy
            record = None
        snapshot = await asyncio.to_thread(_disks(run).snapshot, node, replica_path)
        if record is None or node not in up_to_date_replicas(record):
            return snapshot, -math.inf
        return snapshot, read_at


class PrimaryRollback(ReplicaRollback):
    """A repository's primary restored from a backup and back at once. The
    verifier must settle by majority -- repair the rolled-back replica from
    the others -- not copy its old state over the replicas that hold the
    acknowledged writes.

    The kill is seen at once (the proxies' connections drop and a check out
    of turn confirms it within 0.1 s), so the primary role moves away before
    the node is back, in every run seen: what the verifier meets is a former
    primary recorded up to date without the writes. The verdict against a
    primary that kept its role is proven with an operator pause instead
    (tests/integration/proxy/test_verifier_majority.py)."""

    name = "primary-rollback"
    hold = (0.0, 0.3)
    # More writes missed: the verifier's repair in the wrong direction loses them.
    writes_missed = 3

    def _pick(self, run: RunContext) -> tuple[str, str, str]:
        records = run.records()
        # Cold repositories: a hot one's next compare-and-swap outdates the
        # rolled-back primary before the verifier looks.
        repos = sorted(r for r in run.repos[: max(1, len(run.repos) - 2)] if r in records)
        live = set(_live_nodes(run))
        # A primary with another up-to-date replica, as for every replica loss.
        candidates = (
            [
                r
                for r in repos
                if records[r].primary in live
                and up_to_date_replicas(records[r]) - {records[r].primary}
            ]
            or [r for r in repos if records[r].primary in live]
            or repos
        )
        repo = run.rng.choice(candidates)
        record = records[repo]
        assert record.primary is not None
        return repo, record.primary, record.replica_path

    async def inject(self, run: RunContext) -> Fault:
        fault = await super().inject(run)
        # Back at once: down from the power loss to its restart, not for the
        # whole fault.
        await self.heal(run)
        assert fault.power_loss is not None
        fault.nodes_down_during[fault.target] = [(fault.power_loss, time.monotonic())]
        return fault


class ReplicaWipe(ReplicaLoss):
    """The replica's directory gone (a disk replaced, restored without it)."""

    name = "replica-wipe"


NEMESES: list[type[Nemesis]] = [
    DiskFull,
    SlowDisk,
    ReplicaRollback,
    PrimaryRollback,
    ReplicaWipe,
]
