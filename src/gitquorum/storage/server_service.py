"""ServerService: versions and the state of every storage this node serves.

Readability and writeability are probed on disk at each call (a storage
whose disk went read-only must say so), the filesystem type comes from the
mount table, and each storage keeps a stable random filesystem id so that a
proxy can tell two names for the same directory apart.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from pathlib import Path

import grpc

import gitquorum
from gitquorum.gitaly import server_pb2, server_pb2_grpc
from gitquorum.storage.context import NodeContext
from gitquorum.wire.paths import INTERNAL_DIR

FILESYSTEM_ID = "filesystem_id"
MOUNTS = Path("/proc/mounts")


def _unescape_mount(field: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes.
    for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(escaped, char)
    return field


def fs_type(path: Path, mounts: str | None = None) -> str:
    """The type of the filesystem holding ``path``: the longest mount point above it."""
    if mounts is None:
        try:
            mounts = MOUNTS.read_text()
        except OSError:
            return "unknown"
    target = os.path.realpath(path)
    best, best_type = "", "unknown"
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape_mount(fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, fields[2]
    return best_type


def readable(root: Path) -> bool:
    try:
        os.listdir(root)
    except OSError:
        return False
    return True


def writeable(root: Path) -> bool:
    """Create and remove a file, which is what a push needs to do."""
    try:
        tmp = root / INTERNAL_DIR / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="writeable-", dir=tmp)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError:
        return False
    return True


def filesystem_id(root: Path) -> str:
    """A UUID stored with the storage, created on first use."""
    path = root / INTERNAL_DIR / FILESYSTEM_ID
    try:
        existing = path.read_text().strip()
        return str(uuid.UUID(existing))
    except (OSError, ValueError):
        pass
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="filesystem_id-", dir=path.parent)
        with os.fdopen(fd, "w") as out:
            out.write(f"{uuid.uuid4()}\n")
        # Whichever concurrent call links first wins; the others read its id.
        try:
            os.link(name, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(name)
        return str(uuid.UUID(path.read_text().strip()))
    except (OSError, ValueError):
        return ""


def storage_status(name: str, root: Path) -> server_pb2.ServerInfoResponse.StorageStatus:
    is_readable = readable(root)
    return server_pb2.ServerInfoResponse.StorageStatus(
        storage_name=name,
        readable=is_readable,
        writeable=is_readable and writeable(root),
        fs_type=fs_type(root),
        filesystem_id=filesystem_id(root) if is_readable else "",
        replication_factor=0,
    )


class ServerService(server_pb2_grpc.ServerServiceServicer):
    def __init__(self, node: NodeContext) -> None:
        self.node = node

    async def ServerInfo(
        self, request: server_pb2.ServerInfoRequest, context: grpc.aio.ServicerContext
    ) -> server_pb2.ServerInfoResponse:
        storages = sorted(self.node.locator.storages.items())
        # Disk probes can block on a sick filesystem: keep them off the event loop.
        statuses = await asyncio.gather(
            *(asyncio.to_thread(storage_status, name, root) for name, root in storages)
        )
        return server_pb2.ServerInfoResponse(
            server_version=gitquorum.__version__,
            git_version=self.node.git_version,
            storage_statuses=statuses,
        )
