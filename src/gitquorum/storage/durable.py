"""Make what the node writes itself survive a power loss.

git makes its own writes durable through ``core.fsync`` (set for every git the
node runs, ``git.py``). Repositories the node assembles itself (created,
restored from a bundle, copied from a snapshot) are built in scratch space and
renamed into place: their files, their directories and the rename must all be
on disk before the node votes "committed", or a node that loses power right
after the vote comes back without a replica that etcd records as up to date.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync one file or directory (directories record creations and renames)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """fsync every regular file and directory under ``root`` (symlinks skipped)."""
    for directory, _subdirs, files in os.walk(root):
        for name in files:
            path = Path(directory, name)
            if not path.is_symlink():
                fsync_path(path)
        fsync_path(Path(directory))
