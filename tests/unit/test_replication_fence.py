"""The node's replication fence: one copy at a time per replica, none from a superseded claim."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from gitquorum.errors import Aborted, InvalidArgument
from gitquorum.proxy.channels import NodeChannels
from gitquorum.storage.replication_fence import ReplicationFence, claim_file
from gitquorum.wire.replication_claim import CLAIM_KEY, claim_from_metadata, claim_metadata


@pytest.mark.parametrize(
    ("metadata", "claim"),
    [
        ([], None),
        ([("other", "1")], None),
        ([claim_metadata(7)], 7),
        ([(CLAIM_KEY, b"12")], 12),
        ([(CLAIM_KEY, "0")], 0),
    ],
)
def test_claim_from_metadata(metadata: list[tuple[str, str | bytes]], claim: int | None) -> None:
    assert claim_from_metadata(metadata) == claim


@pytest.mark.parametrize("value", ["", "-1", "1.5", "soon", " 3"])
def test_a_malformed_claim_is_invalid_argument(value: str) -> None:
    with pytest.raises(InvalidArgument, match=CLAIM_KEY):
        claim_from_metadata([(CLAIM_KEY, value)])


async def test_an_older_claim_is_refused_and_later_or_equal_ones_pass() -> None:
    fence = ReplicationFence()
    async with fence.copy("r", 5):
        pass
    with pytest.raises(Aborted, match="superseded"):
        async with fence.copy("r", 4):
            pytest.fail("an older claim must not copy")
    for claim in (5, 6, None):
        async with fence.copy("r", claim):
            pass
    # Other replicas have their own claims.
    async with fence.copy("other", 1):
        pass


async def test_copies_into_one_replica_take_turns() -> None:
    fence = ReplicationFence()
    order: list[str] = []
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with fence.copy("r", 1):
            order.append("first in")
            first_in.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        async with fence.copy("r", 2):
            order.append("second in")

    async with asyncio.timeout(5):
        one = asyncio.create_task(first())
        await first_in.wait()
        two = asyncio.create_task(second())
        for _ in range(5):
            await asyncio.sleep(0)
        assert order == ["first in"]
        release.set()
        await asyncio.gather(one, two)
    assert order == ["first in", "first out", "second in"]


async def test_a_copy_superseded_while_it_waited_is_refused_after_its_turn() -> None:
    fence = ReplicationFence()
    holding = asyncio.Event()
    release = asyncio.Event()

    async def running() -> None:
        async with fence.copy("r", 1):
            holding.set()
            await release.wait()

    async def waiting(claim: int) -> str:
        try:
            async with fence.copy("r", claim):
                return "copied"
        except Aborted:
            return "refused"

    async with asyncio.timeout(5):
        task = asyncio.create_task(running())
        await holding.wait()
        stale = asyncio.create_task(waiting(2))
        await asyncio.sleep(0)
        later = asyncio.create_task(waiting(3))  # arrives while 2 waits
        await asyncio.sleep(0)
        release.set()
        assert await asyncio.gather(task, stale, later) == [None, "refused", "copied"]


def test_the_proxy_never_forwards_a_client_replication_claim() -> None:
    """A claim sent by a client could fence out the real repairs of a replica."""
    channels = NodeChannels({"n1": "127.0.0.1:1"}, secret=b"s")
    out = channels.forward_metadata(
        [(CLAIM_KEY, "999999"), ("x-custom", "kept")], extra=[claim_metadata(3)]
    )
    assert [v for k, v in out if k == CLAIM_KEY] == ["3"]
    assert ("x-custom", "kept") in out


async def test_the_highest_claim_survives_a_restart_of_the_node(tmp_path: Path) -> None:
    """A copy of an old claim arriving after the node restarted is still refused."""
    record = claim_file(tmp_path, "@hashed/ab/cd/x.git")
    before = ReplicationFence()
    async with before.copy("r", 7, record):
        pass
    assert record.read_text().strip() == "7"
    after = ReplicationFence()  # a new node process: nothing in memory
    with pytest.raises(Aborted, match="superseded"):
        async with after.copy("r", 6, record):
            pytest.fail("an older claim must not copy after a restart")
    async with after.copy("r", 8, record):
        pass
    assert record.read_text().strip() == "8"
    # A copy without a claim, or of the same claim, does not rewrite it.
    async with after.copy("r", None, record):
        pass
    async with after.copy("r", 8, record):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == [record.name]


async def test_a_removed_replica_leaves_nothing_behind(tmp_path: Path) -> None:
    record = claim_file(tmp_path, "@hashed/ab/cd/x.git")
    fence = ReplicationFence()
    async with fence.copy("r", 3, record):
        pass
    await fence.forget("r", record)
    assert list(tmp_path.iterdir()) == []
    # Forgetting again, or a replica never copied, is fine.
    await fence.forget("r", record)
    await fence.forget("never", claim_file(tmp_path, "other"))


async def test_a_claim_the_disk_could_not_take_is_written_by_the_next_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk fails the claim's write: no scratch file stays, and a second
    copy of the same claim (a catch-up's next round) still makes it durable."""
    record = claim_file(tmp_path, "@hashed/ab/cd/x.git")
    real_fsync = os.fsync
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    def fsync(fd: int) -> None:
        if failures:
            raise failures.pop()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    fence = ReplicationFence()
    with pytest.raises(OSError, match="No space left"):
        async with fence.copy("r", 7, record):
            pytest.fail("a claim that is not on disk must not copy")
    assert list(tmp_path.iterdir()) == []
    async with fence.copy("r", 7, record):
        pass
    assert record.read_text().strip() == "7"
    assert sorted(p.name for p in tmp_path.iterdir()) == [record.name]
