"""The persisted replication fence when two claims of one replica arrive together.

Takeover is exactly when two copies of one replica, under different claims,
reach the node close together (the old worker's late copy and the new
holder's). The fence's reads and writes of the claim file run in worker
threads, outside the per-replica lock, so their results can come back in
either order.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path

import pytest

from gitquorum.errors import Aborted
from gitquorum.storage import replication_fence
from gitquorum.storage.replication_fence import ReplicationFence, claim_file


async def _try(fence: ReplicationFence, claim: int, record: Path, log: list[str]) -> str:
    try:
        async with fence.copy("r", claim, record):
            log.append(f"copy {claim}")
            return "copied"
    except Aborted:
        return "refused"


async def test_the_claim_on_disk_never_goes_back_to_an_older_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Old claim 5 is admitted first; its file write is still in its thread when
    the new holder's claim 7 arrives and writes 7. The write of 5 finishing
    last leaves 5 on disk: after a restart the node admits claim 5 again."""
    record = claim_file(tmp_path, "@cluster/repositories/ab/cd/1")
    original = replication_fence._write
    seven_written = threading.Event()
    five_writing = threading.Event()

    def write(path: Path, claim: int) -> None:
        if claim == 5:
            five_writing.set()
            # This thread was scheduled late: 7's write gets there first
            # (if anything lets it: a fence that orders its writes does not).
            seven_written.wait(1)
        original(path, claim)
        if claim == 7:
            seven_written.set()

    monkeypatch.setattr(replication_fence, "_write", write)
    fence = ReplicationFence()
    log: list[str] = []
    async with asyncio.timeout(10):
        old = asyncio.create_task(_try(fence, 5, record, log))
        assert await asyncio.to_thread(five_writing.wait, 5)
        new = asyncio.create_task(_try(fence, 7, record, log))
        results = await asyncio.gather(old, new)
    assert results[1] == "copied" and log[-1] == "copy 7"

    restarted = ReplicationFence()  # the node restarted: only the file remains
    monkeypatch.setattr(replication_fence, "_write", original)
    assert await _try(restarted, 5, record, log) == "refused", (
        f"the claim file went back to {record.read_text().strip()!r} after claim 7 was "
        "admitted: the superseded claim 5 copies again after a restart"
    )


async def test_a_slow_first_read_of_the_file_does_not_lower_the_fence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Just after a node restart both claims find nothing in memory and read the
    file. The new holder's read returns first: claim 7 is admitted, written
    and copies. The old claim's read (which saw the file before 7 was written)
    returns afterwards and overwrites the in-memory highest claim: claim 5 is
    admitted after claim 7's copy, undoing it."""
    record = claim_file(tmp_path, "@cluster/repositories/ab/cd/1")
    original = replication_fence._read
    reads = 0
    late_read = threading.Event()
    first_read = threading.Event()

    def read(path: Path | None) -> int:
        nonlocal reads
        reads += 1
        value = original(path)
        if reads == 1:
            first_read.set()
            # Read before 7 was written; the thread is resumed late (after
            # 7's copy, if the fence lets 7 go ahead of this read at all).
            late_read.wait(1)
        return value

    monkeypatch.setattr(replication_fence, "_read", read)
    fence = ReplicationFence()
    log: list[str] = []
    async with asyncio.timeout(10):
        old = asyncio.create_task(_try(fence, 5, record, log))
        assert await asyncio.to_thread(first_read.wait, 5)
        new_result = await _try(fence, 7, record, log)
        late_read.set()
        old_result = await old
    assert new_result == "copied"
    # 5 may copy before 7 (7's copy overwrites it), never after it.
    assert log[-1] == "copy 7", f"the superseded claim 5 copied after claim 7 did: {log}"
    assert old_result == ("copied" if log == ["copy 5", "copy 7"] else "refused")


async def test_a_cancelled_copy_cannot_lower_the_claim_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The io lock is released when the awaiting copy is cancelled, but the
    thread writing its claim runs on: a slow fsync lands it after a later
    claim's write, and a restarted node admits the superseded claim."""
    real = replication_fence._write
    gate, entered = threading.Event(), threading.Event()

    def slow(path: Path, claim: int) -> None:
        if claim == 2:
            entered.set()
            gate.wait(5)
        real(path, claim)

    monkeypatch.setattr(replication_fence, "_write", slow)
    record = tmp_path / "claim"
    fence = ReplicationFence()

    async def copy(claim: int) -> None:
        async with fence.copy("r", claim, record):
            pass

    old = asyncio.ensure_future(copy(2))
    await asyncio.to_thread(entered.wait, 5)
    old.cancel()  # the superseded worker's RPC is cancelled during its fsync
    with contextlib.suppress(asyncio.CancelledError):
        await old
    await copy(3)  # the new holder's copy: claim 3 is durable, the copy admitted
    assert record.read_text().strip() == "3"
    gate.set()
    for _ in range(100):
        if record.read_text().strip() != "3":
            break
        await asyncio.sleep(0.02)
    restarted = ReplicationFence()  # the node restarts
    with pytest.raises(Aborted):
        async with restarted.copy("r", 2, record):
            pass
