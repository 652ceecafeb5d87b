"""Map a protocol ``Repository`` to a directory inside a storage root, safely.

Every path a client names is checked here (its spelling by
``gitquorum.wire.paths``, which the proxy applies too): no absolute paths, no
``..`` components, no NUL bytes, and after resolving symlinks the path must
still lie inside the storage root. Quarantine directories
(``git_object_directory`` and alternates) get the same treatment relative to
the repository.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from gitquorum.errors import FailedPrecondition, InvalidArgument, NotFound
from gitquorum.gitaly import shared_pb2
from gitquorum.wire.paths import INTERNAL_DIR, validate_relative, validate_repository_path


@dataclass(frozen=True)
class RepoPath:
    """A validated repository location and the git environment it needs."""

    storage: str
    relative_path: str
    path: Path
    # Extra environment for quarantined object directories, if any.
    env: tuple[tuple[str, str], ...] = ()

    def git_env(self) -> dict[str, str]:
        return dict(self.env)


def _quote_alternate(path: str) -> str:
    """One entry of GIT_ALTERNATE_OBJECT_DIRECTORIES, safe to join with ':'.

    git splits the variable at every ':', so an entry such as
    "objects:/srv/other.git/objects" would add a second, absolute alternate
    outside the storage. Entries with a ':' (or a leading quote) are written
    C-quoted, which git reads back as one literal path.
    """
    if ":" not in path and not path.startswith('"'):
        return path
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _inside(root: Path, candidate: Path) -> bool:
    """True when candidate, with symlinks resolved as far as they exist, is under root."""
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(candidate))
    return real == real_root or real_root in real.parents


class StorageLocator:
    """Knows the configured storages and validates repository addresses."""

    def __init__(self, storages: dict[str, Path], max_located: int = 4096) -> None:
        self.storages = {name: Path(root) for name, root in storages.items()}
        # Addresses already judged (no quarantine), with the identity of the
        # directory judged: resolving symlinks takes a system call per path
        # component, twice, while one lstat tells whether the same directory is
        # still there (a directory has one real path: same inode, same verdict).
        # A path that is itself a symlink is judged on every call: the
        # directory it leads to may be moved out of the storage and the link
        # pointed at it there, the same inode.
        self.max_located = max_located
        self._located: OrderedDict[tuple[str, str], tuple[RepoPath, tuple[int, int]]] = (
            OrderedDict()
        )

    def storage_root(self, name: str) -> Path:
        if not name:
            raise InvalidArgument("storage name not set")
        if "\x00" in name:
            raise InvalidArgument("storage name contains a NUL byte")
        root = self.storages.get(name)
        if root is None:
            raise InvalidArgument(f"storage name not found: {name!r}")
        return root

    def internal_dir(self, storage: str, *parts: str) -> Path:
        path = self.storage_root(storage).joinpath(INTERNAL_DIR, *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def locate(self, repo: shared_pb2.Repository | None) -> RepoPath:
        """Validate the address without requiring the repository to exist."""
        if repo is None or (not repo.storage_name and not repo.relative_path):
            raise InvalidArgument("repository not set")
        if repo.git_object_directory or repo.git_alternate_object_directories:
            return self._locate(repo)
        key = (repo.storage_name, repo.relative_path)
        known = self._located.get(key)
        if known is not None:
            located, identity = known
            try:
                st = os.lstat(located.path)
            except OSError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == identity:
                self._located.move_to_end(key)
                return located
            del self._located[key]
        try:
            # Before judging: a directory swapped in meanwhile fails the next check.
            st = os.lstat(self.storages[repo.storage_name] / repo.relative_path)
        except (KeyError, OSError, ValueError):
            st = None
        located = self._locate(repo)
        if st is not None and stat.S_ISDIR(st.st_mode):
            self._located[key] = (located, (st.st_dev, st.st_ino))
            if len(self._located) > self.max_located:
                self._located.popitem(last=False)
        return located

    def _locate(self, repo: shared_pb2.Repository) -> RepoPath:
        root = self.storage_root(repo.storage_name)
        if not repo.relative_path:
            raise InvalidArgument("repository path not set")
        relative = validate_repository_path(repo.relative_path, "relative path")
        path = root / relative
        real_root = Path(os.path.realpath(root))
        real = Path(os.path.realpath(path))
        # Judge where symlinks lead, not the spelling: a link to the storage
        # root itself or into the internal directory would let an RPC act on
        # (or remove) the whole storage or its private data.
        if real == real_root or real_root not in real.parents:
            raise InvalidArgument("relative path escapes root directory")
        if real.relative_to(real_root).parts[0] == INTERNAL_DIR:
            raise InvalidArgument("relative path names the storage's internal directory")
        env: list[tuple[str, str]] = []
        if repo.git_object_directory:
            env.append(
                ("GIT_OBJECT_DIRECTORY", str(self._quarantine(path, repo.git_object_directory)))
            )
        if repo.git_alternate_object_directories:
            alternates = [
                _quote_alternate(str(self._quarantine(path, d)))
                for d in repo.git_alternate_object_directories
            ]
            env.append(("GIT_ALTERNATE_OBJECT_DIRECTORIES", ":".join(alternates)))
        return RepoPath(repo.storage_name, relative, path, tuple(env))

    def _quarantine(self, repo_path: Path, relative: str) -> Path:
        cleaned = validate_relative(relative, "object directory")
        path = repo_path / cleaned
        if not _inside(repo_path, path):
            raise InvalidArgument("object directory escapes the repository")
        return path

    def repository(self, repo: shared_pb2.Repository | None) -> RepoPath:
        """Validate the address and require a valid repository there."""
        located = self.locate(repo)
        check_repository(located.path)
        # A quarantine directory that is not there makes every git command fail
        # with "not a git repository" (INTERNAL): refuse it as the bad argument
        # it is (found by tests/fuzz/test_proxy_fuzz.py).
        objects = located.git_env().get("GIT_OBJECT_DIRECTORY") if located.env else None
        if objects is not None and not Path(objects).is_dir():
            raise InvalidArgument("object directory does not exist")
        return located


def is_repository(path: Path) -> bool:
    return path.is_dir() and all((path / e).exists() for e in ("objects", "refs", "HEAD"))


def check_repository(path: Path) -> None:
    # os.path on the string: asked on every call, pathlib's objects cost more than the stats.
    where = str(path)
    if not os.path.isdir(where):
        raise NotFound("repository not found")
    for entry in ("objects", "refs", "HEAD"):
        if not os.path.exists(os.path.join(where, entry)):
            raise FailedPrecondition(f'repository not valid: "{entry}" does not exist')
