"""Long-lived ``git cat-file --batch`` processes shared by read RPCs.

Spawning git per read costs milliseconds; one batch process per repository
answers object lookups in microseconds. Processes are kept in a small LRU
cache, used by one request at a time, and retired when idle or broken.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gitquorum.storage import git
from gitquorum.storage.locator import RepoPath


@dataclass(frozen=True)
class ObjectInfo:
    oid: str
    type: str
    size: int


class ObjectNotFound(Exception):
    """The revision does not name an object (not an RPC error by itself)."""


class BatchProcess:
    """One ``cat-file --batch`` process; callers hold ``lock`` while talking to it."""

    def __init__(self, process: git.GitProcess) -> None:
        self.process = process
        self.lock = asyncio.Lock()
        self.last_used = time.monotonic()
        self.broken = False

    async def _header(self, revision: bytes) -> ObjectInfo:
        if b"\n" in revision or b"\x00" in revision:
            raise ObjectNotFound(revision.decode(errors="replace"))
        self.process.stdin.write(revision + b"\n")
        await self.process.stdin.drain()
        line = await self.process.stdout.readline()
        if not line:
            self.broken = True
            raise ObjectNotFound(revision.decode(errors="replace"))
        fields = line.rstrip(b"\n").split(b" ")
        if len(fields) == 2 and fields[1] in (b"missing", b"ambiguous"):
            raise ObjectNotFound(revision.decode(errors="replace"))
        if len(fields) != 3:
            self.broken = True
            raise ObjectNotFound(revision.decode(errors="replace"))
        return ObjectInfo(fields[0].decode(), fields[1].decode(), int(fields[2]))

    async def read(self, revision: bytes) -> tuple[ObjectInfo, bytes]:
        info = await self._header(revision)
        try:
            data = await self.process.stdout.readexactly(info.size + 1)
        except asyncio.IncompleteReadError:
            self.broken = True
            raise
        return info, data[:-1]

    async def stream(
        self, revision: bytes, limit: int = -1, chunk: int = git.CHUNK
    ) -> AsyncIterator[tuple[ObjectInfo, bytes]]:
        """Yield (info, chunk) pairs; the first pair may carry an empty chunk."""
        info = await self._header(revision)
        remaining = info.size + 1  # trailing LF
        wanted = info.size if limit < 0 else min(limit, info.size)
        sent = 0
        yielded = False
        try:
            while remaining > 0:
                data = await self.process.stdout.read(min(chunk, remaining))
                if not data:
                    self.broken = True
                    return
                remaining -= len(data)
                if remaining == 0:
                    data = data[:-1]
                take = data[: max(0, wanted - sent)]
                sent += len(take)
                if take or not yielded:
                    yielded = True
                    yield info, take
        finally:
            if remaining > 0:
                # The consumer stopped early: the stream is now out of step.
                self.broken = True

    def close(self) -> None:
        self.process.kill()


class BatchCheckProcess(BatchProcess):
    async def info(self, revision: bytes) -> ObjectInfo:
        return await self._header(revision)


class CatFileCache:
    """Per-repository batch processes, bounded in number and idle time."""

    def __init__(self, max_processes: int = 64, max_idle: float = 60.0) -> None:
        self.max_processes = max_processes
        self.max_idle = max_idle
        self._procs: OrderedDict[tuple[str, str, tuple[tuple[str, str], ...]], BatchProcess] = (
            OrderedDict()
        )
        self._spawn_lock = asyncio.Lock()

    async def _get(self, repo: RepoPath, mode: str) -> BatchProcess:
        key = (mode, str(repo.path), repo.env)
        async with self._spawn_lock:
            proc = self._procs.get(key)
            if proc is not None and (proc.broken or proc.process.proc.returncode is not None):
                proc.close()
                del self._procs[key]
                proc = None
            if proc is None:
                process = await git.spawn(
                    ["cat-file", f"--{mode}"], git_dir=repo.path, env=repo.git_env(), stdin=True
                )
                cls = BatchCheckProcess if mode == "batch-check" else BatchProcess
                proc = cls(process)
                self._procs[key] = proc
            self._procs.move_to_end(key)
            self._evict()
            return proc

    def _evict(self) -> None:
        now = time.monotonic()
        for key, proc in list(self._procs.items()):
            too_many = len(self._procs) > self.max_processes
            idle = now - proc.last_used > self.max_idle
            if (too_many or idle) and not proc.lock.locked():
                proc.close()
                del self._procs[key]

    @contextlib.asynccontextmanager
    async def batch(self, repo: RepoPath) -> AsyncIterator[BatchProcess]:
        proc = await self._get(repo, "batch")
        async with proc.lock:
            try:
                yield proc
            except ObjectNotFound:
                raise
            except BaseException:
                proc.broken = True
                raise
            finally:
                proc.last_used = time.monotonic()

    @contextlib.asynccontextmanager
    async def batch_check(self, repo: RepoPath) -> AsyncIterator[BatchCheckProcess]:
        proc = await self._get(repo, "batch-check")
        assert isinstance(proc, BatchCheckProcess)
        async with proc.lock:
            try:
                yield proc
            except ObjectNotFound:
                raise
            except BaseException:
                proc.broken = True
                raise
            finally:
                proc.last_used = time.monotonic()

    async def read(self, repo: RepoPath, revision: bytes) -> tuple[ObjectInfo, bytes]:
        async with self.batch(repo) as proc:
            return await proc.read(revision)

    async def info(self, repo: RepoPath, revision: bytes) -> ObjectInfo:
        async with self.batch_check(repo) as proc:
            return await proc.info(revision)

    def invalidate(self, repo_path: str) -> None:
        """Drop processes of a repository that was removed or replaced."""
        for key, proc in list(self._procs.items()):
            if key[1] == repo_path and not proc.lock.locked():
                proc.close()
                del self._procs[key]

    def close(self) -> None:
        for proc in self._procs.values():
            proc.close()
        self._procs.clear()
