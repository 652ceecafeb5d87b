"""Long-lived cat-file processes against real repositories, checked against git itself."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gitquorum.gitaly import shared_pb2
from gitquorum.storage.catfile import MAX_NAME, CatFileCache, ObjectNotFound
from gitquorum.storage.locator import RepoPath, StorageLocator
from tests.harness.gitrepo import git, make_repo

MISSING = b"0123456789abcdef0123456789abcdef01234567"
BLOB_SIZE = 200_000


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while read
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_dead(pid: int) -> None:
    deadline = asyncio.get_running_loop().time() + 5.0
    while alive(pid):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"cat-file {pid} still alive")
        await asyncio.sleep(0.01)


def repo_path(worktree: Path, env: tuple[tuple[str, str], ...] = ()) -> RepoPath:
    return RepoPath("default", worktree.name, worktree / ".git", env)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("catfile") / "repo", commits=3, binary_size=BLOB_SIZE)


@pytest.fixture
def worktree(template: Path, tmp_path: Path) -> Path:
    """A private copy for tests that add objects; read-only tests use ``template``."""
    return Path(shutil.copytree(template, tmp_path / "repo", symlinks=True))


def distinct(template: Path, count: int) -> list[RepoPath]:
    """Addresses that the cache keeps apart (the environment is part of the key)."""
    return [repo_path(template, (("GITQUORUM_TEST_SLOT", str(i)),)) for i in range(count)]


def cat(worktree: Path, kind: str, oid: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(worktree), "cat-file", kind, oid], capture_output=True, check=True
    ).stdout


@pytest.fixture
async def cache() -> AsyncIterator[CatFileCache]:
    cache = CatFileCache()
    yield cache
    await cache.aclose()


async def batch_pid(cache: CatFileCache, repo: RepoPath) -> int:
    async with cache.batch(repo) as proc:
        return proc.process.proc.pid


def rev(worktree: Path, revision: str) -> str:
    return git("rev-parse", revision, cwd=worktree).strip()


async def test_read_matches_git(cache: CatFileCache, template: Path) -> None:
    repo = repo_path(template)
    for revision in ("HEAD", "HEAD~1", "HEAD^{tree}", "HEAD:README.md", "v1.1", "main:src"):
        info, data = await cache.read(repo, revision.encode())
        assert info.oid == rev(template, revision)
        assert info.type == git("cat-file", "-t", revision, cwd=template).strip()
        assert info.size == int(git("cat-file", "-s", revision, cwd=template))
        assert data == cat(template, info.type, info.oid)
    info, data = await cache.read(repo, b"HEAD:blob.bin")
    assert info.size == BLOB_SIZE
    assert data == (template / "blob.bin").read_bytes()


async def test_read_many_answers_each_revision_as_read_does(
    cache: CatFileCache, template: Path
) -> None:
    repo = repo_path(template)
    revisions = [b"HEAD", MISSING, b"HEAD:blob.bin", b"bad\nname", b"v1.1", b"nope^{commit}"]
    # Many more than one group of requests: later groups stay in step.
    revisions += [b"HEAD~1", b"HEAD^{tree}", MISSING] * 3000
    async with cache.batch(repo) as proc:
        answers = await proc.read_many(revisions)
    assert len(answers) == len(revisions)
    for revision, answer in zip(revisions[:9], answers, strict=False):
        try:
            expected = await cache.read(repo, revision)
        except ObjectNotFound:
            assert answer is None, revision
        else:
            assert answer == expected, revision
    assert answers[6:] == answers[6:9] * 3000
    # The process is still in step afterwards.
    assert (await cache.read(repo, b"HEAD"))[0].oid == rev(template, "HEAD")


async def test_read_many_takes_an_overlong_name_for_no_object(
    cache: CatFileCache, template: Path
) -> None:
    repo = repo_path(template)
    pid = await batch_pid(cache, repo)
    async with cache.batch(repo) as proc:
        answers = await proc.read_many([b"HEAD", b"x" * (2 << 20), b"HEAD~1"])
    assert answers[1] is None
    assert [a[0].oid for a in (answers[0], answers[2]) if a] == [
        rev(template, "HEAD"),
        rev(template, "HEAD~1"),
    ]
    assert await batch_pid(cache, repo) == pid


async def test_read_each_stopped_early_leaves_no_process_out_of_step(
    cache: CatFileCache, template: Path
) -> None:
    repo = repo_path(template)
    pid = await batch_pid(cache, repo)
    async with cache.batch(repo) as proc:
        async with contextlib.aclosing(proc.read_each([b"HEAD", b"HEAD~1", b"HEAD~2"])) as each:
            first = await anext(each)
        assert first is not None and first[0].oid == rev(template, "HEAD")
        assert proc.broken
    # The next reader gets a process in step (a new one), not HEAD~1's answer.
    info, _ = await cache.read(repo, b"HEAD^{tree}")
    assert info.oid == rev(template, "HEAD^{tree}")
    assert await batch_pid(cache, repo) != pid


async def test_info_matches_git(cache: CatFileCache, template: Path) -> None:
    repo = repo_path(template)
    for revision in ("HEAD", "v1.1", "HEAD:blob.bin", "HEAD^{tree}"):
        info = await cache.info(repo, revision.encode())
        assert (info.oid, info.type, info.size) == (
            rev(template, revision),
            git("cat-file", "-t", revision, cwd=template).strip(),
            int(git("cat-file", "-s", revision, cwd=template)),
        )


async def test_stream_in_chunks(cache: CatFileCache, template: Path) -> None:
    repo = repo_path(template)
    async with cache.batch(repo) as proc:
        pieces = [piece async for piece in proc.stream(b"HEAD:blob.bin", chunk=65536)]
    assert all(info.size == BLOB_SIZE and info.type == "blob" for info, _ in pieces)
    assert all(len(data) <= 65536 for _, data in pieces)
    assert b"".join(d for _, d in pieces) == (template / "blob.bin").read_bytes()
    # The process is still in step: the next request reads the right object.
    _, data = await cache.read(repo, b"HEAD:README.md")
    assert data == (template / "README.md").read_bytes()


async def test_stream_with_limit(cache: CatFileCache, template: Path) -> None:
    repo = repo_path(template)
    for limit in (0, 1, 1000, 65536, 65537, BLOB_SIZE, BLOB_SIZE + 10):
        async with cache.batch(repo) as proc:
            pieces = [p async for p in proc.stream(b"HEAD:blob.bin", limit=limit, chunk=65536)]
        assert pieces, limit
        assert pieces[0][0].size == BLOB_SIZE
        assert b"".join(d for _, d in pieces) == (template / "blob.bin").read_bytes()[:limit]
    pid = await batch_pid(cache, repo)
    info, _ = await cache.read(repo, b"HEAD")
    assert info.type == "commit"
    assert await batch_pid(cache, repo) == pid


async def test_stream_empty_blob_yields_info(cache: CatFileCache, worktree: Path) -> None:
    (worktree / "empty").write_bytes(b"")
    oid = git("hash-object", "-w", "empty", cwd=worktree).strip()
    async with cache.batch(repo_path(worktree)) as proc:
        pieces = [p async for p in proc.stream(oid.encode())]
    assert len(pieces) == 1
    assert pieces[0][0].size == 0
    assert pieces[0][1] == b""


@pytest.mark.parametrize(
    "revision",
    [
        MISSING,
        b"no-such-branch",
        b"HEAD:no such file.txt",  # git echoes the spaces back
        b"HEAD:missing missing",
        b"",
        b"HEAD\nHEAD",
        b"HEAD\x00",
        b"\xff\xfe",
        b"refs/heads/../../etc",
        b"-h",
        b"HEAD^{blob}",
        # Over MAX_NAME: never asked (a 2 MiB name's echo would not fit the
        # reader's buffer), a missing object all the same.
        b"x" * (2 << 20),
        b"HEAD:" + b"a/" * (MAX_NAME // 2),
        # Just at MAX_NAME: asked, and git's echo of it is read back.
        b"y" * MAX_NAME,
    ],
    ids=lambda r: repr(r[:24]) + (f"+{len(r) - 24}" if len(r) > 24 else ""),
)
async def test_missing_objects_keep_the_process(
    cache: CatFileCache, template: Path, revision: bytes
) -> None:
    repo = repo_path(template)
    pid = await batch_pid(cache, repo)
    with pytest.raises(ObjectNotFound):
        await cache.read(repo, revision)
    with pytest.raises(ObjectNotFound):
        await cache.info(repo, revision)
    info, _ = await cache.read(repo, b"HEAD")
    assert info.oid == rev(template, "HEAD")
    assert await batch_pid(cache, repo) == pid
    assert alive(pid)


async def test_revision_with_spaces_found(cache: CatFileCache, worktree: Path) -> None:
    (worktree / "a file with spaces.txt").write_text("spaced\n")
    git("add", "-A", cwd=worktree)
    git("commit", "-q", "-m", "spaces", cwd=worktree)
    info, data = await cache.read(repo_path(worktree), b"HEAD:a file with spaces.txt")
    assert data == b"spaced\n"
    assert info.type == "blob"


async def test_new_objects_after_start_are_found(cache: CatFileCache, worktree: Path) -> None:
    repo = repo_path(worktree)
    pid = await batch_pid(cache, repo)
    old_head = (await cache.read(repo, b"HEAD"))[0].oid
    (worktree / "new.txt").write_text("added later\n")
    git("add", "new.txt", cwd=worktree)
    git("commit", "-q", "-m", "later", cwd=worktree)
    new_head = rev(worktree, "HEAD")
    assert new_head != old_head
    # By oid, and by a ref that moved after the process started.
    assert (await cache.read(repo, new_head.encode()))[0].type == "commit"
    assert (await cache.read(repo, b"HEAD"))[0].oid == new_head
    assert (await cache.read(repo, b"HEAD:new.txt"))[1] == b"added later\n"
    # Objects moved into a fresh pack (loose copies deleted) are found too.
    (worktree / "packed.txt").write_text("packed later\n")
    git("add", "packed.txt", cwd=worktree)
    git("commit", "-q", "-m", "packed", cwd=worktree)
    git("repack", "-a", "-d", "-q", cwd=worktree)
    git("prune-packed", cwd=worktree)
    assert (await cache.read(repo, b"HEAD:packed.txt"))[1] == b"packed later\n"
    assert (await cache.info(repo, b"HEAD:packed.txt")).size == len(b"packed later\n")
    assert await batch_pid(cache, repo) == pid


async def test_abandoned_stream_gets_a_fresh_process(cache: CatFileCache, template: Path) -> None:
    repo = repo_path(template)
    async with cache.batch(repo) as proc:
        pid = proc.process.proc.pid
        stream = proc.stream(b"HEAD:blob.bin", chunk=4096)
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]
    await wait_dead(pid)
    _, data = await cache.read(repo, b"HEAD:README.md")
    assert data == (template / "README.md").read_bytes()
    assert await batch_pid(cache, repo) != pid


async def test_waiter_does_not_inherit_an_out_of_step_process(
    cache: CatFileCache, template: Path
) -> None:
    """A request queued behind one that abandons a stream must not read its leftovers."""
    repo = repo_path(template)
    holding = asyncio.Event()
    release = asyncio.Event()

    async def abandon() -> None:
        async with cache.batch(repo) as proc:
            stream = proc.stream(b"HEAD:blob.bin", chunk=4096)
            async for _ in stream:
                break
            holding.set()
            await release.wait()
            await stream.aclose()  # type: ignore[attr-defined]

    holder = asyncio.create_task(abandon())
    await holding.wait()
    waiter = asyncio.create_task(cache.read(repo, b"HEAD:README.md"))
    await asyncio.sleep(0)  # let the waiter queue on the process lock
    release.set()
    await holder
    info, data = await asyncio.wait_for(waiter, 10)
    assert info.type == "blob"
    assert data == (template / "README.md").read_bytes()


async def test_lru_eviction(template: Path) -> None:
    repos = distinct(template, 3)
    cache = CatFileCache(max_processes=2)
    try:
        pids = [await batch_pid(cache, r) for r in repos]
        await wait_dead(pids[0])  # least recently used, beyond the limit
        assert alive(pids[1]) and alive(pids[2])
        # Using r1 again makes r2 the oldest.
        assert await batch_pid(cache, repos[1]) == pids[1]
        new0 = await batch_pid(cache, repos[0])
        assert new0 != pids[0]
        await wait_dead(pids[2])
        assert alive(pids[1]) and alive(new0)
    finally:
        await cache.aclose()


async def test_busy_process_is_never_evicted(template: Path) -> None:
    a, b = distinct(template, 2)
    cache = CatFileCache(max_processes=1)
    try:
        async with cache.batch(a) as held:
            # Over the limit while `a` is busy: the new process must still serve.
            info, _ = await cache.read(b, b"HEAD")
            assert info.type == "commit"
            assert (await held.read(b"HEAD"))[0].type == "commit"
    finally:
        await cache.aclose()


async def test_idle_processes_retired(template: Path) -> None:
    a, b = distinct(template, 2)
    cache = CatFileCache(max_idle=0.0)
    try:
        pid_a = await batch_pid(cache, a)
        await batch_pid(cache, b)
        await wait_dead(pid_a)
    finally:
        await cache.aclose()


async def test_invalidate(cache: CatFileCache, template: Path) -> None:
    repo = repo_path(template)
    pid = await batch_pid(cache, repo)
    await cache.info(repo, b"HEAD")
    cache.invalidate(str(repo.path))
    await wait_dead(pid)
    assert await batch_pid(cache, repo) != pid


async def test_invalidate_while_busy(cache: CatFileCache, template: Path) -> None:
    repo = repo_path(template)
    async with cache.batch(repo) as proc:
        pid = proc.process.proc.pid
        cache.invalidate(str(repo.path))
        # The request in flight finishes on its process.
        assert (await proc.read(b"HEAD"))[0].type == "commit"
    await wait_dead(pid)
    assert await batch_pid(cache, repo) != pid


async def test_close_kills_everything(template: Path) -> None:
    cache = CatFileCache()
    repo = repo_path(template)
    pid = await batch_pid(cache, repo)
    await cache.info(repo, b"HEAD")
    await cache.aclose()
    assert not alive(pid)


async def test_quarantine_env_selects_objects(cache: CatFileCache, worktree: Path) -> None:
    git_dir = worktree / ".git"
    quarantine = git_dir / "objects" / "incoming-test"
    quarantine.mkdir()
    oid = git(
        "hash-object",
        "-w",
        "--stdin",
        cwd=worktree,
        input=b"quarantined\n",
        env={"GIT_OBJECT_DIRECTORY": str(quarantine)},
    ).strip()
    plain = repo_path(worktree)
    quarantined = repo_path(
        worktree,
        (
            ("GIT_OBJECT_DIRECTORY", str(quarantine)),
            ("GIT_ALTERNATE_OBJECT_DIRECTORIES", str(git_dir / "objects")),
        ),
    )
    with pytest.raises(ObjectNotFound):
        await cache.read(plain, oid.encode())
    assert (await cache.read(quarantined, oid.encode()))[1] == b"quarantined\n"
    # Alternates still reach the main object store.
    assert (await cache.read(quarantined, b"HEAD"))[0].type == "commit"


def located(root: Path, relative: str, **fields: Any) -> RepoPath:
    locator = StorageLocator({"s": root})
    return locator.locate(shared_pb2.Repository(storage_name="s", relative_path=relative, **fields))


async def test_alternates_cannot_smuggle_a_second_path(
    cache: CatFileCache, worktree: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.git"
    git("init", "-q", "--bare", str(other))
    secret = git("hash-object", "-w", "--stdin", cwd=other, input=b"secret\n").strip().encode()
    # Joined naively, "objects:<other>/objects" would be two alternates.
    naive = repo_path(
        worktree,
        (("GIT_ALTERNATE_OBJECT_DIRECTORIES", f"{worktree}/.git/objects:{other}/objects"),),
    )
    assert (await cache.read(naive, secret))[1] == b"secret\n"
    crafted = located(
        tmp_path, "repo/.git", git_alternate_object_directories=[f"objects:{other}/objects"]
    )
    with pytest.raises(ObjectNotFound):
        await cache.read(crafted, secret)


async def test_quarantine_in_a_path_with_colons(
    cache: CatFileCache, template: Path, tmp_path: Path
) -> None:
    repo = Path(shutil.copytree(template, tmp_path / "group:a" / "x:y", symlinks=True))
    quarantine = repo / ".git" / "objects" / "incoming-1"
    quarantine.mkdir()
    oid = git(
        "hash-object",
        "-w",
        "--stdin",
        cwd=repo,
        input=b"in quarantine\n",
        env={"GIT_OBJECT_DIRECTORY": str(quarantine)},
    ).strip()
    address = located(
        tmp_path,
        "group:a/x:y/.git",
        git_object_directory="objects/incoming-1",
        git_alternate_object_directories=["objects"],
    )
    assert (await cache.read(address, oid.encode()))[1] == b"in quarantine\n"
    # The main object store is reached through the (quoted) alternate.
    assert (await cache.read(address, b"HEAD"))[0].oid == rev(template, "HEAD")
