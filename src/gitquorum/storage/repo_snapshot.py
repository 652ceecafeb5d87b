"""GetSnapshot: a tar of a repository's git data, and its safe extraction elsewhere.

The tar is written by ``tarfile`` in a worker thread and handed to the RPC
in chunks with bounded buffering. Order matters while the repository keeps
changing: refs are archived before objects, so every archived ref names
objects that are in the archive too (git writes objects before it moves
refs); loose refs are read before ``packed-refs`` so a concurrent
``pack-refs`` cannot hide a ref; and the pack directory is listed again at the
end so a pack that replaced one deleted by a concurrent repack is included.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import tarfile
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from gitquorum.errors import Internal
from gitquorum.storage.locator import is_repository

SNAPSHOT_CHUNK = 128 * 1024
_BUFFERED_CHUNKS = 16
_FILES_AFTER_REFS = ("packed-refs", "HEAD", "config", "shallow", "info/attributes")
# objects/info/alternates names paths that mean nothing on another node;
# lock files and tmp_* files are writes in progress.
_SKIPPED = ("objects/info/alternates",)


def _skipped(relative: str) -> bool:
    name = relative.rsplit("/", 1)[-1]
    return (
        relative in _SKIPPED
        or name.endswith(".lock")
        or name.startswith("tmp_")
        or name.startswith("incoming-")
    )


class _Stopped(Exception):
    """The consumer went away; the producer thread unwinds."""


class _ChunkSink:
    """File-like target for tarfile that hands fixed-size chunks to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[object]) -> None:
        self.loop = loop
        self.queue = queue
        self.slots = threading.Semaphore(_BUFFERED_CHUNKS)
        self.stop = threading.Event()
        self.buffer = bytearray()

    def put(self, item: object) -> None:
        while not self.slots.acquire(timeout=0.2):
            if self.stop.is_set():
                raise _Stopped
        if self.stop.is_set():
            raise _Stopped
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def write(self, data: bytes) -> int:
        self.buffer += data
        while len(self.buffer) >= SNAPSHOT_CHUNK:
            self.put(bytes(self.buffer[:SNAPSHOT_CHUNK]))
            del self.buffer[:SNAPSHOT_CHUNK]
        return len(data)

    def flush(self) -> None:
        if self.buffer:
            self.put(bytes(self.buffer))
            self.buffer.clear()


def _walk(root: Path, top: str) -> Iterator[str]:
    """Relative paths under ``root/top``, directories before their contents, sorted."""
    start = root / top
    if not start.is_dir():
        return
    yield top
    for current, dirs, files in os.walk(start):
        dirs.sort()
        base = os.path.relpath(current, root)
        for name in dirs:
            yield f"{base}/{name}"
        for name in sorted(files):
            yield f"{base}/{name}"


def _add(tar: tarfile.TarFile, root: Path, relative: str, seen: set[str]) -> None:
    if relative in seen or _skipped(relative):
        return
    path = root / relative
    try:
        st = os.lstat(path)
        if stat.S_ISDIR(st.st_mode):
            info = tarfile.TarInfo(relative)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            info.mtime = int(st.st_mtime)
            tar.addfile(info)
        elif stat.S_ISREG(st.st_mode):
            with path.open("rb") as handle:
                # Size and bytes from the same open inode, even if git replaces
                # the file by rename while it is being read.
                st = os.fstat(handle.fileno())
                info = tarfile.TarInfo(relative)
                info.size = st.st_size
                info.mode = stat.S_IMODE(st.st_mode) & 0o755 | 0o644
                info.mtime = int(st.st_mtime)
                tar.addfile(info, handle)
        else:
            return  # symlinks, sockets and the like never belong in a repository copy
    except FileNotFoundError:
        return  # removed while we walked: a newer file replaces it
    seen.add(relative)


def write_snapshot(root: Path, sink: _ChunkSink) -> None:
    """Archive the repository at ``root`` into ``sink`` (runs in a worker thread)."""
    seen: set[str] = set()
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for relative in _walk(root, "refs"):
            _add(tar, root, relative, seen)
        for relative in _FILES_AFTER_REFS:
            if (root / relative).exists():
                if relative.startswith("info/"):
                    _add(tar, root, "info", seen)
                _add(tar, root, relative, seen)
        for relative in _walk(root, "objects"):
            _add(tar, root, relative, seen)
        for relative in _walk(root, "objects/pack"):
            _add(tar, root, relative, seen)
    sink.flush()


async def stream_snapshot(root: Path) -> AsyncIterator[bytes]:
    """The snapshot tar of ``root`` as chunks; the worker stops when the consumer does."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    sink = _ChunkSink(loop, queue)
    done = object()

    def produce() -> None:
        try:
            write_snapshot(root, sink)
            sink.put(done)
        except _Stopped:
            pass
        except BaseException as exc:
            # Bypass the slot limit: the consumer must learn about the failure.
            loop.call_soon_threadsafe(queue.put_nowait, exc)

    worker = loop.run_in_executor(None, produce)
    try:
        while True:
            item = await queue.get()
            sink.slots.release()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise Internal(f"snapshot failed: {item}") from item
            assert isinstance(item, bytes)
            yield item
    finally:
        sink.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.shield(worker)


def extract_snapshot(archive: Path, destination: Path) -> None:
    """Unpack a snapshot tar, refusing anything that would land outside ``destination``."""
    try:
        with tarfile.open(archive, mode="r:") as tar:
            tar.extractall(destination, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise Internal(f"snapshot could not be extracted: {exc}") from exc
    if not is_repository(destination):
        raise Internal("snapshot does not contain a repository")
    # Empty directories git expects but a snapshot of a fresh repository may lack.
    for needed in ("refs/heads", "refs/tags", "objects/info", "objects/pack"):
        (destination / needed).mkdir(parents=True, exist_ok=True)
