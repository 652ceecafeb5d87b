"""Scratch space inside a storage and atomic placement of finished repositories.

New repositories are built in the storage's own ``+gitquorum/tmp`` so that the
final ``rename`` stays on one filesystem and readers never see a half-built
repository. Removed repositories are renamed there first for the same reason:
the repository disappears in one step, the slow delete happens afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from gitquorum.errors import AlreadyExists
from gitquorum.storage.durable import fsync_path
from gitquorum.storage.locator import StorageLocator


def tmp_root(locator: StorageLocator, storage: str) -> Path:
    return locator.internal_dir(storage, "tmp")


async def remove_tree(path: Path) -> None:
    """Delete a directory (or file) without blocking the event loop; never raises."""

    def remove() -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()

    # Shielded so that a cancelled RPC still cleans up after itself.
    with contextlib.suppress(Exception):
        await asyncio.shield(asyncio.to_thread(remove))


@contextlib.asynccontextmanager
async def scratch_dir(locator: StorageLocator, storage: str, prefix: str) -> AsyncIterator[Path]:
    """A fresh directory under ``+gitquorum/tmp``, deleted when the block ends."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_root(locator, storage)))
    try:
        yield path
    finally:
        await remove_tree(path)


def ensure_absent(target: Path) -> None:
    if target.exists() or target.is_symlink():
        raise AlreadyExists("repository exists already")


def move_into_place(source: Path, target: Path) -> None:
    """Rename a finished repository to its final path; refuse to replace anything.

    The caller made ``source``'s files durable first (``durable.sync_tree``,
    before its vote); this makes the rename durable in both directories. A few
    directory fsyncs: run inline, so a cancelled call cannot leave the rename
    half-way behind it while its scratch space is being deleted.
    """
    ensure_absent(target)
    _make_parents(target.parent)
    try:
        # rename(2) replaces at most an empty directory, so a repository created
        # concurrently at the same path makes this fail instead of being lost.
        os.rename(source, target)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise AlreadyExists("repository exists already") from exc
        raise
    fsync_path(target.parent)
    fsync_path(source.parent)


def _make_parents(directory: Path) -> None:
    """``mkdir -p`` whose new directory entries are on disk too."""
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):
            path.mkdir()
        fsync_path(path.parent)


def move_aside(locator: StorageLocator, storage: str, path: Path, label: str) -> Path:
    """Rename ``path`` into ``+gitquorum/tmp`` so it vanishes atomically; return the new path."""
    destination = tmp_root(locator, storage) / f"{label}-{secrets.token_hex(8)}"
    os.rename(path, destination)
    # A removal or a stale replica set aside must not reappear after a power loss.
    fsync_path(path.parent)
    fsync_path(destination.parent)
    return destination
