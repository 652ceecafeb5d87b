"""The replication fence shared by the worker processes of one node (``across_processes``)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gitquorum.errors import Aborted
from gitquorum.storage import git
from gitquorum.storage.replication_fence import ReplicationFence, claim_file

# Another worker of the node: copies into the replica under ``claim`` and holds
# it until its standard input closes.
OTHER_WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from gitquorum.storage.replication_fence import ReplicationFence

    async def main() -> None:
        fence = ReplicationFence(across_processes=True)
        async with fence.copy("r", int(sys.argv[2]), Path(sys.argv[1])):
            print("holding", flush=True)
            await asyncio.to_thread(sys.stdin.read)

    asyncio.run(main())
    """
)


async def _worker_that_copied(tmp_path: Path, claim: int) -> tuple[Path, ReplicationFence]:
    """A worker's fence that copied replica "r" under ``claim``, and the claim file."""
    record = claim_file(tmp_path / "claims", "group/repo.git")
    fence = ReplicationFence(across_processes=True)
    async with fence.copy("r", claim, record):
        pass
    return record, fence


async def test_a_copy_waits_for_another_processes_copy_and_takes_its_claim(
    tmp_path: Path,
) -> None:
    # This worker has seen claim 3 of the replica.
    record, fence = await _worker_that_copied(tmp_path, 3)
    other = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        OTHER_WORKER,
        str(record),
        "7",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert other.stdout is not None and other.stdin is not None
        async with asyncio.timeout(30):
            assert await other.stdout.readline() == b"holding\n"
        entered = asyncio.Event()

        async def late_copy() -> None:
            async with fence.copy("r", 5, record):
                entered.set()

        late = asyncio.create_task(late_copy())
        # Still waiting while the other process holds the replica.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await asyncio.shield(late)
        assert not entered.is_set()
        other.stdin.close()
        async with asyncio.timeout(30):
            assert await other.wait() == 0
            # Its turn came: claim 7, recorded by the other process, supersedes 5.
            with pytest.raises(Aborted, match="superseded"):
                await late
        assert not entered.is_set()
        assert record.read_text().strip() == "7"
        async with fence.copy("r", 8, record):
            pass
        assert record.read_text().strip() == "8"
    finally:
        if other.returncode is None:
            other.kill()
        # To the end of its output too: a pipe left unread when the test's loop
        # closes is collected later, with a warning, in another test.
        await other.communicate()


async def test_two_fences_of_one_node_take_turns_through_the_lock(tmp_path: Path) -> None:
    """Two workers' fences (separate descriptors conflict under flock, in one process too)."""
    record = claim_file(tmp_path / "claims", "group/repo.git")
    first, second = ReplicationFence(across_processes=True), ReplicationFence(across_processes=True)
    order: list[str] = []
    release = asyncio.Event()
    inside = asyncio.Event()

    async def hold() -> None:
        async with first.copy("r", 1, record):
            order.append("first in")
            inside.set()
            await release.wait()
            order.append("first out")

    async def follow() -> None:
        async with second.copy("r", 2, record):
            order.append("second in")

    async with asyncio.timeout(10):
        one = asyncio.create_task(hold())
        await inside.wait()
        two = asyncio.create_task(follow())
        await asyncio.sleep(0.2)
        assert order == ["first in"]
        release.set()
        await asyncio.gather(one, two)
    assert order == ["first in", "first out", "second in"]
    assert record.read_text().strip() == "2"


async def test_without_sharing_a_worker_would_admit_a_superseded_claim(tmp_path: Path) -> None:
    """Why the node's workers share the fence: memory alone misses another process's claim."""
    (tmp_path / "claims").mkdir()
    record = claim_file(tmp_path / "claims", "group/repo.git")
    alone = ReplicationFence()
    async with alone.copy("r", 3, record):
        pass
    record.write_text("7\n")  # what another worker recorded meanwhile
    async with alone.copy("r", 5, record):
        pass  # admitted: the fence a single process uses trusts its memory
    record = claim_file(tmp_path / "claims", "group/other.git")
    shared = ReplicationFence(across_processes=True)
    async with shared.copy("r2", 3, record):
        pass
    record.write_text("7\n")
    with pytest.raises(Aborted, match="superseded"):
        async with shared.copy("r2", 5, record):
            pytest.fail("a claim older than another worker's must not copy")


async def test_forgetting_a_replica_another_process_copies_into_keeps_its_claim(
    tmp_path: Path,
) -> None:
    """The claim file is removed only under the replica's lock, never under another's copy."""
    record, fence = await _worker_that_copied(tmp_path, 4)
    # Another worker's copy holds the replica's lock (another descriptor: flock conflicts).
    other = os.open(record.with_name(f"{record.name}.lock"), os.O_RDWR)
    try:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        await fence.forget("r", record)
        assert record.read_text().strip() == "4"
    finally:
        os.close(other)
    # Nobody copies any more: forgotten.
    await fence.forget("r", record)
    assert not record.exists()


async def test_a_copys_git_keeps_the_lock_after_its_worker_lets_go(tmp_path: Path) -> None:
    """A worker killed mid-copy closes its descriptor; its git, still writing, holds the lock."""
    record, fence = await _worker_that_copied(tmp_path, 1)
    async with fence.copy("r", 2, record):
        copying = await git.spawn(["hash-object", "--stdin"], stdin=True)
        long_lived = await git.spawn(["hash-object", "--stdin"], stdin=True, inherit=False)

    async def end(process: git.GitProcess) -> None:
        assert process.proc.stdin is not None
        process.proc.stdin.close()
        async with asyncio.timeout(30):
            await process.wait()

    other = ReplicationFence(across_processes=True)
    try:
        # The copy's block ended (as the killed worker's descriptor closes) with git running.
        await other.forget("r", record)
        assert record.read_text().strip() == "2"
        await end(copying)
        # Its git has exited; a long-lived process that does not inherit never held it.
        await other.forget("r", record)
        assert not record.exists()
    finally:
        for process in (copying, long_lived):
            if process.proc.returncode is None:
                await end(process)
