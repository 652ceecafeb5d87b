"""What every nemesis of the fault suite is: a fault it injects and heals.

A nemesis acts on the real processes, network paths, disks or clocks of a
:class:`~tests.faults.cluster.FaultCluster` through the run's
:class:`~tests.faults.context.RunContext`. ``inject`` returns what it hit (for
the fault log and the report); ``heal`` undoes it so that the cluster can
recover on its own. Both are coroutines; blocking work goes to a thread
(``asyncio.to_thread``) so the workload's event loop keeps going.

The class attributes tell the checker what the fault allows:

* ``kind`` -- ``process``, ``network``, ``disk``, ``etcd``, ``clock`` or
  ``operations``. A verifier repair of a replica recorded up to date is a
  violation unless a ``disk`` fault hit that replica's node.
* ``reads_available`` -- while this fault is active a read of a repository
  with an up-to-date replica alive and reachable must succeed (failed reads
  count as violations). False for faults that take away what reads need by
  design: etcd past the stale-read limit, every proxy path, the client's own
  proxy.

What a fault took, and when, is on its :class:`Fault`: the nodes, proxies and
paths it took away, for the whole fault unless it says when (a proxy or node
brought back before the heal: ``proxies_down_during``, ``nodes_down_during``),
and for a disk fault the replica it damaged, when its node lost power
(``power_loss``) and which writes the replica came back with (``backup_at``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from tests.faults.context import RunContext

KINDS = ("process", "network", "disk", "etcd", "clock", "operations")


@dataclass
class Fault:
    """One injected fault, on the run's monotonic clock."""

    nemesis: str
    kind: str
    target: str
    start: float
    end: float | None = None
    detail: str = ""
    # A replica this fault rolled back or wiped on its node's disk: the node in
    # ``disk_nodes``, the repository in ``disk_repos``. Only that replica is
    # exempt from the up-to-date and repair checks, and reads of that
    # repository served from it are stale until the verifier finds it (counted
    # apart, not violations: those begun after ``power_loss`` that missed only
    # writes acknowledged after ``backup_at``).
    disk_nodes: tuple[str, ...] = ()
    disk_repos: tuple[str, ...] = ()
    # When such a node lost power (killed, just after the fault opened): writes
    # acknowledged until then may be on the disk that went back in time.
    power_loss: float | None = None
    # What the damaged replica came back with: every write acknowledged before
    # ``backup_at`` is in it, writes acknowledged from then to ``power_loss``
    # may be missing. A rollback stamps it when the records are read just
    # before the backup copy is made, if the replica is up to date in them (a
    # replica recorded up to date holds every write acknowledged before the
    # record was read, and its copy taken after keeps them). A wipe keeps
    # nothing, nor does a copy of a replica that was outdated (which writes it
    # held is unknown): ``-inf``, every write acknowledged before the power
    # loss may be gone from that replica; whether the cluster lost it is
    # whether another replica held it (``checker.lost_to_disk`` then looks at
    # every replica recorded up to date from the acknowledgement to the power
    # loss). None: not known, the checker assumes a backup at most
    # ``checker.BACKUP_AGE`` before the fault.
    backup_at: float | None = None
    # Seconds after the start before the fault excuses failed reads (etcd lost:
    # the proxies serve from their cache up to the stale-read limit first).
    excuse_after: float = 0.0
    # Proxies the clients could not reach while it lasted (their failed reads
    # are the client's path, not the cluster's availability).
    proxies_down: tuple[str, ...] = ()
    # When set, the windows (monotonic start, end) in which those proxies were
    # down; the rest of the fault they served (a proxy restarted into a skewed
    # clock is down only while it restarts).
    proxies_down_during: list[tuple[float, float]] = field(default_factory=list)
    # Nodes stopped (killed, paused) while it lasted: their replicas could not serve.
    nodes_down: tuple[str, ...] = ()
    # For a node of ``nodes_down`` brought back before the heal (resumed or
    # restarted mid-fault), the windows (monotonic start, end) it was stopped
    # in; each counts it down until the fault's ``recovery`` after its end (the
    # proxies seeing it back), the rest of the fault it served. A node absent
    # (or with no window) is down for the whole fault.
    nodes_down_during: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    # Repositories left with no up-to-date replica alive by design of the fault
    # (their failed reads and writes are expected until it heals).
    repos_down: tuple[str, ...] = ()
    # Copied from the nemesis: reads must stay available while it lasts, and
    # for how long after its heal failures are still its own.
    reads_available: bool = True
    recovery: float = 3.0
    # (proxy, node) paths cut while it lasted: through that proxy the node's
    # replicas were unreachable although the node ran.
    unreachable: tuple[tuple[str, str], ...] = ()


@dataclass
class FaultLog:
    faults: list[Fault] = field(default_factory=list)

    def open(self, fault: Fault) -> Fault:
        self.faults.append(fault)
        return fault


class Nemesis(ABC):
    name: ClassVar[str]
    kind: ClassVar[str]
    reads_available: ClassVar[bool] = True
    # How long the fault stays before it is healed (seconds, drawn by the schedule).
    hold: ClassVar[tuple[float, float]] = (4.0, 8.0)
    # After the heal, how long failed reads are still the fault's (the cluster
    # seeing the healed part again).
    recovery: ClassVar[float] = 3.0

    def applicable(self, run: RunContext) -> bool:
        """Whether the cluster this run has can take this fault (e.g. 3 etcd members)."""
        return True

    @abstractmethod
    async def inject(self, run: RunContext) -> Fault:
        """Inject the fault; return it (``run.fault(...)`` builds and logs one)."""

    @abstractmethod
    async def heal(self, run: RunContext) -> None:
        """Undo the fault: restart, resume, reconnect, restore."""
