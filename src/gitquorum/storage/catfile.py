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
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass

from gitquorum.errors import Internal
from gitquorum.storage import git
from gitquorum.storage.locator import RepoPath

# SIGKILLed processes exit at once; this only bounds a stuck reaper.
_REAP_TIMEOUT = 5.0
# Requests written at once by ``read_many``: far below a pipe's 64 KiB, so
# writing them never waits for git, which may be blocked writing answers.
_PIPELINE_BYTES = 16 * 1024
# The longest name asked of a batch process. git echoes a missing name back on
# its answer line, and a line longer than the reader's buffer cannot be read
# (the request would fail with an internal error); no ref name or tree path a
# repository can hold comes near this, so a longer name names no object.
MAX_NAME = 32 * 1024


def _askable(revision: bytes) -> bool:
    """Whether ``revision`` can be written to a batch process as one request."""
    return len(revision) <= MAX_NAME and b"\n" not in revision and b"\x00" not in revision


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
        # Requests that were handed this process and have not finished with it;
        # counted from the cache lookup on, so that eviction never closes a
        # process between lookup and lock (the lock alone leaves that gap).
        self.users = 0

    async def _header(self, revision: bytes) -> ObjectInfo:
        if not _askable(revision):
            raise ObjectNotFound(revision[:MAX_NAME].decode(errors="replace"))
        self.process.stdin.write(revision + b"\n")
        await self.process.stdin.drain()
        return await self._answer(revision)

    async def _answer(self, revision: bytes) -> ObjectInfo:
        """The header line answering ``revision`` (already written)."""
        line = await self.process.stdout.readline()
        if not line:
            self.broken = True
            raise ObjectNotFound(revision.decode(errors="replace"))
        line = line.rstrip(b"\n")
        # "<revision> missing": the revision is echoed verbatim and may itself
        # contain spaces (e.g. "HEAD:a file"), so look at the end of the line.
        if line.endswith((b" missing", b" ambiguous")):
            raise ObjectNotFound(revision.decode(errors="replace"))
        fields = line.split(b" ")
        if len(fields) != 3 or not fields[2].isdigit():
            self.broken = True
            raise ObjectNotFound(revision.decode(errors="replace"))
        return ObjectInfo(fields[0].decode(), fields[1].decode(), int(fields[2]))

    async def read(self, revision: bytes) -> tuple[ObjectInfo, bytes]:
        info = await self._header(revision)
        return info, await self._body(info)

    async def read_many(self, revisions: Sequence[bytes]) -> list[tuple[ObjectInfo, bytes] | None]:
        """``read`` of each revision (None where it names no object), with the
        requests written together: one round trip per group instead of one per object."""
        async with contextlib.aclosing(self.read_each(revisions)) as answers:
            return [answer async for answer in answers]

    async def read_each(
        self, revisions: Sequence[bytes]
    ) -> AsyncGenerator[tuple[ObjectInfo, bytes] | None, None]:
        """``read_many``'s answers one by one, in order, as they come: the caller
        works on one while git prepares the next. A caller that stops early must
        close the generator (``contextlib.aclosing``) before letting the process go:
        it is then marked out of step."""
        wanted = [i for i, rev in enumerate(revisions) if _askable(rev)]
        position = 0  # index of the next answer to give
        finished = False
        try:
            start = 0
            while start < len(wanted):
                # Groups small enough that git's answers never wait on unread requests.
                end, size = start, 0
                while end < len(wanted) and (end == start or size < _PIPELINE_BYTES):
                    size += len(revisions[wanted[end]]) + 1
                    end += 1
                group = wanted[start:end]
                self.process.stdin.write(b"".join(revisions[i] + b"\n" for i in group))
                await self.process.stdin.drain()
                for i in group:
                    while position < i:  # names never asked: no object
                        yield None
                        position += 1
                    try:
                        info = await self._answer(revisions[i])
                    except ObjectNotFound as exc:
                        if self.broken:
                            raise Internal("cat-file stopped answering") from exc
                        answer = None
                    else:
                        answer = (info, await self._body(info))
                    yield answer
                    position += 1
                start = end
            while position < len(revisions):
                yield None
                position += 1
            finished = True
        finally:
            if not finished:
                # Stopped between a request and its answer: out of step.
                self.broken = True

    async def _body(self, info: ObjectInfo) -> bytes:
        try:
            data = await self.process.stdout.readexactly(info.size + 1)
        except asyncio.IncompleteReadError:
            self.broken = True
            raise
        return data[:-1]

    async def header(self, revision: bytes) -> ObjectInfo:
        """Ask for an object: its header. Its content must follow, read by
        ``body`` or ``stream(..., info=)``, before anything else is asked."""
        return await self._header(revision)

    async def body(self, info: ObjectInfo) -> bytes:
        """The whole content of the object whose header was just read."""
        return await self._body(info)

    async def stream(
        self,
        revision: bytes,
        limit: int = -1,
        chunk: int = git.CHUNK,
        *,
        info: ObjectInfo | None = None,
    ) -> AsyncIterator[tuple[ObjectInfo, bytes]]:
        """Yield (info, chunk) pairs; the first pair may carry an empty chunk.

        ``info``: the header, already read by ``header``.
        """
        if info is None:
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
        proc = self._procs.get(key)
        if proc is not None and not proc.broken and proc.process.proc.returncode is None:
            # A healthy process: no spawn can be under way for this key (a
            # replacement is removed from the table first), so no lock needed.
            self._procs.move_to_end(key)
            proc.users += 1
            self._evict()
            return proc
        async with self._spawn_lock:
            proc = self._procs.get(key)
            if proc is not None and (proc.broken or proc.process.proc.returncode is not None):
                del self._procs[key]
                # A request may still be inside it (invalidate() marks busy
                # processes broken); the last user closes it on release.
                if proc.users == 0:
                    proc.close()
                proc = None
            if proc is None:
                process = await git.spawn(
                    # Nobody reads a batch process's stderr; warnings such as
                    # "refname is ambiguous" would fill the pipe and stall it.
                    ["-c", "core.warnAmbiguousRefs=false", "cat-file", f"--{mode}"],
                    git_dir=repo.path,
                    env=repo.git_env(),
                    stdin=True,
                    stderr=False,
                    # Long-lived: started during a replication copy, it must
                    # not keep the copy's lock (git.inheriting).
                    inherit=False,
                )
                cls = BatchCheckProcess if mode == "batch-check" else BatchProcess
                proc = cls(process)
                self._procs[key] = proc
            self._procs.move_to_end(key)
            proc.users += 1
            self._evict()
            return proc

    def _evict(self) -> None:
        now = time.monotonic()
        for key, proc in list(self._procs.items()):
            too_many = len(self._procs) > self.max_processes
            idle = now - proc.last_used > self.max_idle
            if (too_many or idle or proc.broken) and proc.users == 0:
                proc.close()
                del self._procs[key]

    @staticmethod
    def _release(proc: BatchProcess) -> None:
        proc.users -= 1
        if proc.broken and proc.users == 0:
            proc.close()

    @contextlib.asynccontextmanager
    async def _use(self, repo: RepoPath, mode: str) -> AsyncIterator[BatchProcess]:
        while True:
            proc = await self._get(repo, mode)
            try:
                await proc.lock.acquire()
            except BaseException:
                self._release(proc)
                raise
            if not proc.broken and proc.process.proc.returncode is None:
                break
            # The previous holder left the process out of step (or it died)
            # while this request waited for the lock: its output can no longer
            # be trusted, so take a fresh process.
            proc.lock.release()
            self._release(proc)
        try:
            yield proc
        except ObjectNotFound:
            raise
        except BaseException:
            proc.broken = True
            raise
        finally:
            proc.last_used = time.monotonic()
            proc.lock.release()
            self._release(proc)

    def batch(self, repo: RepoPath) -> contextlib.AbstractAsyncContextManager[BatchProcess]:
        return self._use(repo, "batch")

    @contextlib.asynccontextmanager
    async def batch_check(self, repo: RepoPath) -> AsyncIterator[BatchCheckProcess]:
        async with self._use(repo, "batch-check") as proc:
            assert isinstance(proc, BatchCheckProcess)
            yield proc

    async def read(self, repo: RepoPath, revision: bytes) -> tuple[ObjectInfo, bytes]:
        async with self.batch(repo) as proc:
            return await proc.read(revision)

    async def info(self, repo: RepoPath, revision: bytes) -> ObjectInfo:
        async with self.batch_check(repo) as proc:
            return await proc.info(revision)

    def invalidate(self, repo_path: str) -> None:
        """Drop processes of a repository that was removed or replaced."""
        for key, proc in list(self._procs.items()):
            if key[1] != repo_path:
                continue
            if proc.users == 0:
                proc.close()
                del self._procs[key]
            else:
                # In use: let the current request finish, then replace it on
                # the next lookup instead of serving the old repository again.
                proc.broken = True

    def close(self) -> None:
        for proc in self._procs.values():
            proc.close()
        self._procs.clear()

    async def aclose(self) -> None:
        """``close`` and wait for the processes to be reaped.

        Killed processes are reaped through the event loop; a loop that closes
        first leaves their transports behind and prints warnings at exit.
        """
        procs = list(self._procs.values())
        self.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(p.process.wait() for p in procs), return_exceptions=True),
                _REAP_TIMEOUT,
            )
