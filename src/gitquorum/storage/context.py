"""What every storage-node service needs: storages, git helpers, voting, metrics."""

from __future__ import annotations

from dataclasses import dataclass

from gitquorum.storage.catfile import CatFileCache
from gitquorum.storage.locator import StorageLocator
from gitquorum.storage.transaction import VoteCoordinator


@dataclass
class NodeContext:
    locator: StorageLocator
    catfile: CatFileCache
    voting: VoteCoordinator
    git_version: str = ""
