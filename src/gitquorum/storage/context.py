"""What every storage-node service needs: storages, git helpers, voting, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gitquorum.storage.catfile import CatFileCache
from gitquorum.storage.commitcache import ReachableAnswers
from gitquorum.storage.locator import StorageLocator
from gitquorum.storage.refread import PackedRefs
from gitquorum.storage.replication_fence import ReplicationFence
from gitquorum.storage.voting import VoteCoordinator
from gitquorum.tls import ClientTLS


@dataclass
class NodeContext:
    locator: StorageLocator
    catfile: CatFileCache
    voting: VoteCoordinator
    git_version: str = ""
    # How this node dials other nodes that advertise tls:// (replication sources).
    client_tls: ClientTLS | None = None
    # One copy at a time into a replica, none from a superseded claim.
    replication_fence: ReplicationFence = field(default_factory=ReplicationFence)
    # Single refs read from the files (RefExists, FindDefaultBranchName), not by spawning git.
    packed_refs: PackedRefs = field(default_factory=PackedRefs)
    # Answers by the object a ref points to (the ref is read on every call).
    reachable: ReachableAnswers = field(init=False)

    def __post_init__(self) -> None:
        self.reachable = ReachableAnswers(self.packed_refs)

    def forget_repository(self, path: Path) -> None:
        """Drop everything kept for the repository at ``path``: it was removed,
        or replaced by another (a repair), and nothing read from it holds."""
        self.catfile.invalidate(str(path))
        self.packed_refs.forget(path)
        self.reachable.forget(path)
