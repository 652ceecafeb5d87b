"""What every storage-node service needs: storages, git helpers, voting, metrics."""

from __future__ import annotations

from dataclasses import dataclass

from gitquorum.storage.catfile import CatFileCache
from gitquorum.storage.locator import StorageLocator
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
