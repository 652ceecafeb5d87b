"""The snapshot producer: a complete tar, and a worker that stops when the consumer does."""

from __future__ import annotations

import asyncio
import io
import os
import tarfile
from pathlib import Path

from gitquorum.storage import repo_snapshot
from gitquorum.storage.repo_snapshot import extract_snapshot, stream_snapshot
from tests.harness import gitrepo


def bare_copy(tmp_path: Path, binary_size: int = 0) -> Path:
    work = gitrepo.make_repo(tmp_path / "work", binary_size=binary_size)
    bare = tmp_path / "bare.git"
    gitrepo.git("clone", "-q", "--bare", str(work), str(bare))
    return bare


async def test_snapshot_round_trip(tmp_path: Path) -> None:
    bare = bare_copy(tmp_path)
    (bare / "refs" / "heads" / "main.lock").write_text("in progress\n")
    (bare / "objects" / "info" / "alternates").write_text("/elsewhere/objects\n")
    data = b"".join([chunk async for chunk in stream_snapshot(bare)])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        names = tar.getnames()
    assert names.index("refs") < names.index("objects")
    assert "refs/heads/main.lock" not in names
    assert "objects/info/alternates" not in names
    archive = tmp_path / "snapshot.tar"
    archive.write_bytes(data)
    extract_snapshot(archive, tmp_path / "copy.git")
    gitrepo.git("--git-dir", str(tmp_path / "copy.git"), "fsck", "--no-progress")
    assert gitrepo.refs(tmp_path / "copy.git") == gitrepo.refs(bare)


async def test_abandoned_stream_stops_the_worker(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Small chunks and buffer: the worker is certainly blocked when the consumer leaves.
    monkeypatch.setattr(repo_snapshot, "SNAPSHOT_CHUNK", 4096)
    monkeypatch.setattr(repo_snapshot, "_BUFFERED_CHUNKS", 2)
    bare = bare_copy(tmp_path, binary_size=1_000_000)
    stream = stream_snapshot(bare)
    first = await anext(stream)
    assert first
    await asyncio.sleep(0)
    # aclose runs the generator's cleanup, which waits for the worker thread.
    await asyncio.wait_for(stream.aclose(), timeout=5)


async def test_worker_failure_reaches_the_consumer(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bare = bare_copy(tmp_path)

    def broken(root: Path, sink: object) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(repo_snapshot, "write_snapshot", broken)
    try:
        async for _ in stream_snapshot(bare):
            pass
    except Exception as exc:
        assert "disk on fire" in str(exc)
    else:
        raise AssertionError("the failure was swallowed")


def test_extract_refuses_escaping_members(tmp_path: Path) -> None:
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../escaped")
        payload = b"x"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    try:
        extract_snapshot(archive, tmp_path / "out")
    except Exception as exc:
        assert "snapshot" in str(exc)
    else:
        raise AssertionError("an escaping member was extracted")
    assert not (tmp_path / "escaped").exists()
    assert not os.path.exists(tmp_path.parent / "escaped")
