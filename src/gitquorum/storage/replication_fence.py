"""One copy at a time into a replica, and never one from a superseded claim.

A replication worker that was paused past its lease (or cut off) can still
have a ``ReplicateRepository`` running, or arriving late, at the target node
after its job was taken over. Its fetch read the source earlier; if it
force-updated the replica after the new holder's copy was recorded up to
date, writes acknowledged in between would be undone on the replica. The
node therefore runs the copies into one replica one at a time, and refuses a
copy whose claim revision is below the highest it has seen for that replica
(also once it waited its turn). A copy without a claim (a direct call)
only waits its turn.

The highest claim of each replica is also kept on disk (``+gitquorum/
replication-claims/<sha256 of the relative path>``, written and fsynced before
the copy is admitted): a node restarted between the new holder's copy and the
late arrival of the old one still refuses it.

A node of several worker processes (``workers``) shares one fence through
the disk (``across_processes``): each copy also holds an exclusive ``flock``
on the claim file's ``.lock`` beside it, and reads the highest claim from the
file under that lock, since another worker may have admitted a later one.
The git processes a copy starts inherit that lock's descriptor: a worker
killed mid-copy leaves its git running, and the lock is released only once
the last of them has exited.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from gitquorum.errors import Aborted
from gitquorum.storage import git
from gitquorum.storage.durable import fsync_path


@dataclass
class _Replica:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    highest: int | None = None  # None: not read from disk yet
    io: asyncio.Lock = field(default_factory=asyncio.Lock)
    persisted: int = -1


def claim_file(directory: Path, relative_path: str) -> Path:
    """Where the highest claim of one replica is kept, under ``directory``."""
    return directory / hashlib.sha256(relative_path.encode()).hexdigest()


def _read(path: Path | None) -> int:
    if path is None:
        return -1
    try:
        return int(path.read_text().strip() or -1)
    except (FileNotFoundError, ValueError):
        return -1


def _write(path: Path, claim: int) -> None:
    # A name of its own: two writers must never share (and truncate) one file.
    staged = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with staged.open("w") as handle:
            handle.write(f"{claim}\n")
            handle.flush()
            os.fsync(handle.fileno())
        staged.replace(path)
    except BaseException:
        # A full disk fails the write: every failed attempt would leave a file.
        staged.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


class ReplicationFence:
    def __init__(self, *, across_processes: bool = False) -> None:
        self._replicas: dict[str, _Replica] = {}
        # Several worker processes serve this node's storages (module docstring).
        self.across_processes = across_processes

    @contextlib.asynccontextmanager
    async def copy(
        self, replica: str, claim: int | None, record: Path | None = None
    ) -> AsyncIterator[None]:
        """Hold ``replica`` for one copy under ``claim`` (None: no claim);
        ``record``: the file that keeps the replica's highest claim."""
        # Kept for the node's life: the highest claim must keep refusing
        # stragglers (a lock and an int per replica ever replicated here).
        state = self._replicas.setdefault(replica, _Replica())
        if state.highest is None:
            async with state.io:
                if state.highest is None:
                    state.highest = state.persisted = await asyncio.to_thread(_read, record)
        if not self.across_processes:
            # Refused early, without waiting its turn. Not with other processes:
            # this one's memory may be behind the file, which it must not overwrite.
            await self._admit(replica, state, claim, record)
        async with state.lock, self._other_processes(state, record):
            # A later claim may have arrived while this one waited.
            await self._admit(replica, state, claim, record)
            yield

    @contextlib.asynccontextmanager
    async def _other_processes(self, state: _Replica, record: Path | None) -> AsyncIterator[None]:
        """Hold the replica against copies in other worker processes, and take
        the highest claim any of them recorded."""
        if not self.across_processes or record is None:
            yield
            return
        async with _file_lock(record.with_name(f"{record.name}.lock")) as fd:
            on_disk = await asyncio.to_thread(_read, record)
            state.highest = max(-1 if state.highest is None else state.highest, on_disk)
            state.persisted = max(state.persisted, on_disk)
            # The copy's git processes share the lock: a worker killed mid-copy
            # leaves it held until its git has exited too, not to another
            # worker's copy of the same replica while that git still writes.
            with git.inheriting(fd):
                yield

    @staticmethod
    async def _admit(replica: str, state: _Replica, claim: int | None, record: Path | None) -> None:
        if claim is None:
            return
        highest = -1 if state.highest is None else state.highest
        if claim < highest:
            raise Aborted(
                f"replication of {replica} superseded: claim {claim} was taken over "
                f"(claim {highest} is later)"
            )
        if claim > highest:
            state.highest = claim
        # Also when the claim is known in memory already: an earlier copy of it
        # may have failed to write it (a full disk).
        if record is not None and claim > state.persisted:
            async with state.io:
                if claim > state.persisted:
                    await _write_holding_lock(record, claim)
                    state.persisted = claim

    async def forget(self, replica: str, record: Path | None = None) -> None:
        """The replica was removed: drop what is kept of its claims (bounded
        state; repository ids are never reused, so no later copy needs it).
        Kept while a copy into it runs or waits, here or, with other worker
        processes, in one of them (it holds the replica's file lock)."""
        state = self._replicas.get(replica)
        if state is not None and (state.lock.locked() or state.io.locked()):
            return
        if record is None:
            self._replicas.pop(replica, None)
            return
        if self.across_processes:
            if await asyncio.to_thread(_unlink_unless_copying, record):
                self._replicas.pop(replica, None)
            return
        self._replicas.pop(replica, None)
        await asyncio.to_thread(_unlink, record)


async def _write_holding_lock(record: Path, claim: int) -> None:
    """Write ``claim`` in a thread; a cancelled caller still waits for the thread
    to end before it gives up the io lock: otherwise the thread writing an older
    claim runs on and can replace a later claim's file after it was written
    (and a restarted node would admit the superseded claim)."""
    task = asyncio.ensure_future(asyncio.to_thread(_write, record, claim))
    cancelled = False
    while True:
        try:
            await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()


# How often a copy waiting for another process's copy of the same replica looks again.
_LOCK_POLL = 0.02


@contextlib.asynccontextmanager
async def _file_lock(path: Path) -> AsyncIterator[int]:
    """An exclusive ``flock`` on ``path`` (created if missing), released on exit;
    yields the descriptor.

    Polled without blocking, so that a cancelled copy stops waiting at once;
    closing the descriptor releases the lock, also when the process dies.
    """
    fd = await asyncio.to_thread(_open_lock, path)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(_LOCK_POLL)
        yield fd
    finally:
        os.close(fd)


def _open_lock(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _unlink_unless_copying(record: Path) -> bool:
    """Remove ``record`` under its file lock, taken without waiting; False (kept)
    when another process's copy holds it. The lock file itself stays: a process
    that opened it before an unlink would lock a file the others no longer see."""
    fd = _open_lock(record.with_name(f"{record.name}.lock"))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        _unlink(record)
        return True
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_path(path.parent)
