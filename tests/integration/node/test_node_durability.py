"""A real node makes what it assembles durable before it votes.

``strace`` attaches to a running node while it creates a repository: every
file of the staged repository and its directories must be fsynced before the
rename into place (the node's PREPARED vote comes between them), and the
rename itself, with any new parent directory, right after it.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from gitquorum.gitaly import repository_pb2, repository_pb2_grpc, shared_pb2
from tests.harness.node import NodeProcess, wait_for

FSYNC = re.compile(r"f(?:data)?sync\(\d+<([^>]*)>\)")


def _strace() -> str:
    found = shutil.which("strace")
    if found is None:
        pytest.fail("strace is needed to trace fsync calls (apt-get install strace)")
    return found


def fsynced(lines: Sequence[str]) -> set[str]:
    return {m.group(1) for line in lines if (m := FSYNC.search(line))}


async def test_a_created_repository_is_fsynced_before_it_is_placed(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    node = NodeProcess("durable", storage, tmp_path / "logs").start()
    trace, errors = tmp_path / "trace.txt", tmp_path / "strace.err"
    assert node.proc is not None
    command = ["-f", "-y", "-e", "trace=fsync,fdatasync,rename", "-o", str(trace)]
    with errors.open("wb") as stderr:
        # A pooled node (GITQUORUM_TEST_NODE_WORKERS): its workers run the RPCs.
        pids = [word for pid in node.server_pids() for word in ("-p", str(pid))]
        tracer = await asyncio.create_subprocess_exec(_strace(), *command, *pids, stderr=stderr)
    final = storage / "group" / "durable.git"
    try:
        wait_for(lambda: "attached" in errors.read_text(), 10, what="strace to attach")
        repo = shared_pb2.Repository(storage_name="durable", relative_path="group/durable.git")
        async with node.channel() as channel:
            stub = repository_pb2_grpc.RepositoryServiceStub(channel)
            await stub.CreateRepository(repository_pb2.CreateRepositoryRequest(repository=repo))
        assert (final / "HEAD").exists()
        # strace writes as it goes: wait for the fsync that follows the rename.
        wait_for(
            lambda: trace.exists() and f"<{final.parent}>" in trace.read_text(),
            10,
            what="the rename's fsync to show in the trace",
        )
    finally:
        tracer.terminate()
        await tracer.wait()
        node.terminate()
    lines = trace.read_text().splitlines()
    rename = next(i for i, line in enumerate(lines) if "rename(" in line and str(final) in line)
    before, after = fsynced(lines[:rename]), fsynced(lines[rename:])
    staged = [p for p in before if "/+gitquorum/tmp/create-" in p]
    for name in ("repo.git/HEAD", "repo.git/config", "repo.git/refs", "repo.git"):
        assert any(p.endswith(name) for p in staged), (name, sorted(staged))
    # The new parent directory's entry, before; the rename in both directories, after.
    assert str(storage) in before, sorted(before)
    assert str(final.parent) in after, sorted(after)
    scratch = str(Path(next(p for p in staged if p.endswith("repo.git/HEAD"))).parents[1])
    assert scratch in after, sorted(after)
