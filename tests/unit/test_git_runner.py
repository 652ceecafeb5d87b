"""The async git runner: results, clean environment, and no leaked processes."""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

import pytest

from gitquorum.errors import InvalidArgument
from gitquorum.storage import git
from tests.harness.gitrepo import git as git_cli
from tests.harness.gitrepo import make_repo


def alive(pid: int) -> bool:
    """Running (a zombie counts as dead: it only waits for its parent to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while read
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def wait_dead(pid: int) -> None:
    deadline = asyncio.get_running_loop().time() + 5.0
    while alive(pid):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"process {pid} still alive after 5s")
        await asyncio.sleep(0.01)


def complete_line(path: Path) -> str | None:
    text = path.read_text() if path.exists() else ""
    return text if text.endswith("\n") else None


async def wait_file(path: Path) -> str:
    deadline = asyncio.get_running_loop().time() + 5.0
    while (text := complete_line(path)) is None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{path} not written after 5s")
        await asyncio.sleep(0.01)
    return text


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("runner") / "repo", commits=2)


def hang_args(pid_file: Path) -> list[str]:
    """A git command whose helper (a shell, then sleep) records its pid and hangs."""
    return ["-c", f"alias.hang=!echo $$ > {pid_file}; exec sleep 60", "hang"]


async def test_run_returns_output(repo: Path) -> None:
    result = await git.run(["rev-parse", "HEAD"], git_dir=repo / ".git")
    assert result.ok
    assert result.returncode == 0
    assert result.stdout.decode().strip() == git_cli("rev-parse", "HEAD", cwd=repo).strip()
    assert result.stderr == b""


async def test_run_reports_failure(repo: Path) -> None:
    result = await git.run(["rev-parse", "--verify", "no-such-ref"], git_dir=repo / ".git")
    assert not result.ok
    assert result.returncode == 128
    assert b"fatal" in result.stderr or b"Needed a single revision" in result.stderr


async def test_run_exit_code_passthrough(repo: Path) -> None:
    result = await git.run(["-c", "alias.five=!exit 5", "five"], cwd=repo)
    assert result.returncode == 5


async def test_run_with_input(repo: Path) -> None:
    result = await git.run(["hash-object", "--stdin"], git_dir=repo / ".git", input=b"hello\n")
    assert result.ok
    expected = git_cli("hash-object", "--stdin", cwd=repo, input=b"hello\n").strip()
    assert result.stdout.decode().strip() == expected


async def test_run_uses_cwd_and_env(repo: Path) -> None:
    result = await git.run(
        ["var", "GIT_AUTHOR_IDENT"],
        cwd=repo,
        env={"GIT_AUTHOR_NAME": "Env Name", "GIT_AUTHOR_EMAIL": "e@x"},
    )
    assert result.stdout.decode().startswith("Env Name <e@x>")


async def test_environment_is_clean(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A GIT_DIR or GIT_CONFIG_* in the node's own environment must not leak into git.
    monkeypatch.setenv("GIT_DIR", "/nonexistent")
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", "'user.name'='Leaked'")
    monkeypatch.setenv("HOME", str(repo))
    (repo / ".gitconfig").write_text("[user]\n\tname = From Home\n")
    result = await git.run(["config", "--get", "user.name"], git_dir=repo / ".git")
    assert result.returncode == 1, result.stdout
    env = git.base_env({"GIT_PROTOCOL": "version=2"})
    assert env["GIT_TERMINAL_PROMPT"] == "0"
    assert env["GIT_CONFIG_NOSYSTEM"] == "1"
    assert env["GIT_PROTOCOL"] == "version=2"
    assert "GIT_DIR" not in env
    (repo / ".gitconfig").unlink()


async def test_started_kills_git_on_exit(repo: Path) -> None:
    async with git.started(["cat-file", "--batch"], git_dir=repo / ".git", stdin=True) as proc:
        pid = proc.proc.pid
        proc.stdin.write(b"HEAD\n")
        await proc.stdin.drain()
        header = await proc.stdout.readline()
        assert header.split()[1] == b"commit"
        assert alive(pid)
        # stdin stays open: cat-file would wait for the next request forever.
    await wait_dead(pid)
    assert proc.proc.returncode is not None


async def test_started_kills_the_whole_process_group(tmp_path: Path, repo: Path) -> None:
    pid_file = tmp_path / "helper.pid"
    async with git.started(hang_args(pid_file), cwd=repo) as proc:
        helper = int(await wait_file(pid_file))
        assert helper != proc.proc.pid
        assert alive(helper)
    await wait_dead(proc.proc.pid)
    await wait_dead(helper)


async def test_started_kills_on_exception(repo: Path) -> None:
    pid = 0
    with pytest.raises(RuntimeError, match="handler failed"):
        async with git.started(["cat-file", "--batch"], git_dir=repo / ".git", stdin=True) as p:
            pid = p.proc.pid
            raise RuntimeError("handler failed")
    await wait_dead(pid)


async def test_run_cancelled_kills_git(tmp_path: Path, repo: Path) -> None:
    pid_file = tmp_path / "helper.pid"
    task = asyncio.create_task(git.run(hang_args(pid_file), cwd=repo))
    helper = int(await wait_file(pid_file))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_dead(helper)


async def test_kill_is_idempotent(repo: Path) -> None:
    async with git.started(["version"]) as proc:
        await proc.wait()
        proc.kill()
        proc.kill()
    assert proc.proc.returncode == 0


async def test_close_stdin_ends_batch(repo: Path) -> None:
    async with git.started(["cat-file", "--batch"], git_dir=repo / ".git", stdin=True) as proc:
        await proc.close_stdin()
        await proc.close_stdin()
        assert await asyncio.wait_for(proc.wait(), 5) == 0


async def test_cancelled_close_stdin_leaves_asyncio_consistent(repo: Path) -> None:
    """An RPC cancelled while closing git's stdin must not upset asyncio's pipe bookkeeping."""
    loop = asyncio.get_running_loop()
    problems: list[dict[str, object]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: problems.append(context))
    try:
        async with git.started(["cat-file", "--batch"], git_dir=repo / ".git", stdin=True) as p:
            closing = asyncio.create_task(p.close_stdin())
            await asyncio.sleep(0)  # inside wait_closed()
            closing.cancel()
            with pytest.raises(asyncio.CancelledError):
                await closing
            assert await asyncio.wait_for(p.wait(), 5) == 0
        for _ in range(10):  # let the pipe callbacks run
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(previous)
    assert not problems, problems


async def test_read_chunks(repo: Path) -> None:
    size = 300_000
    (repo / "big.bin").write_bytes(os.urandom(size))
    async with git.started(["hash-object", "-w", "big.bin"], cwd=repo) as proc:
        oid = (await proc.stdout.read()).decode().strip()
    async with git.started(["cat-file", "blob", oid], git_dir=repo / ".git") as proc:
        chunks = [chunk async for chunk in git.read_chunks(proc.stdout, 65536)]
    assert all(len(c) <= 65536 for c in chunks)
    assert b"".join(chunks) == (repo / "big.bin").read_bytes()
    (repo / "big.bin").unlink()


async def test_read_chunks_joins_output_already_written() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"0005\x01")  # a side-band header, its payload written just after
    asyncio.get_running_loop().call_soon(reader.feed_data, b"payload")
    chunks = git.read_chunks(reader, 64)
    assert await anext(chunks) == b"0005\x01payload"
    # Nothing more written yet: what there is goes out at once, no waiting.
    reader.feed_data(b"progress")
    assert await asyncio.wait_for(anext(chunks), 1) == b"progress"
    reader.feed_eof()
    assert [c async for c in chunks] == []


async def test_read_chunks_never_joins_past_the_size() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"abc")
    asyncio.get_running_loop().call_soon(reader.feed_data, b"0123456789")
    asyncio.get_running_loop().call_soon(reader.feed_eof)
    chunks = [c async for c in git.read_chunks(reader, 8)]
    assert chunks[0] == b"abc01234"
    assert all(len(c) <= 8 for c in chunks)
    assert b"".join(chunks) == b"abc0123456789"


async def test_version() -> None:
    version = await git.version()
    assert version[0].isdigit()
    assert git_cli("version").strip().endswith(version)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ([], []),
        (["core.bigFileThreshold=1m"], ["-c", "core.bigFileThreshold=1m"]),
        (["a.b=", "c.d=x=y"], ["-c", "a.b=", "-c", "c.d=x=y"]),
    ],
)
def test_config_args(options: list[str], expected: list[str]) -> None:
    assert git.config_args(options) == expected


@pytest.mark.parametrize("bad", ["no-equals", "=value", "", "a.b=x\x00y", "a\nb=c", "\x00=1"])
def test_config_args_rejects(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid git config option"):
        git.config_args(["ok.key=1", bad])


@pytest.mark.parametrize(
    ("protocol", "env"),
    [
        ("version=2", {"GIT_PROTOCOL": "version=2"}),
        ("version=1", {"GIT_PROTOCOL": "version=1"}),
        ("", {}),
        ("version=0", {}),
        ("version=3", {}),
        ("version=2:evil", {}),
        ("version=2\nGIT_DIR=/", {}),
    ],
)
def test_protocol_env(protocol: str, env: dict[str, str]) -> None:
    assert git.protocol_env(protocol) == env


async def test_read_chunks_sends_fuller_messages_than_blob_chunks_by_default() -> None:
    # Git's streamed output (a clone's pack) goes out in messages of up to
    # STREAM_CHUNK: every hop pays per message, so fuller ones cost less.
    assert git.STREAM_CHUNK > git.CHUNK
    reader = asyncio.StreamReader(limit=git.STREAM_CHUNK * 4)
    data = os.urandom(git.STREAM_CHUNK + 1000)
    reader.feed_data(data)
    reader.feed_eof()
    chunks = [chunk async for chunk in git.read_chunks(reader)]
    assert [len(chunk) for chunk in chunks] == [git.STREAM_CHUNK, 1000]
    assert b"".join(chunks) == data


async def test_an_argument_over_the_kernels_limit_is_the_requests_fault(repo: Path) -> None:
    with pytest.raises(InvalidArgument, match="too large for git's command line"):
        await git.run(["rev-parse", "x" * 200_000], git_dir=repo)
    # Other spawn failures stay what they are.
    with pytest.raises(OSError):
        await git.run(["rev-parse", "HEAD"], cwd=repo / "no-such-directory")


async def test_a_bulk_read_gathers_what_git_writes_next() -> None:
    """A pack arrives in side-band packets of up to 65,520 bytes, each its own
    write: a bulk read waits GATHER for the following ones, so a message carries
    several packets instead of one (a 54 MB clone: about 230 messages, not 1,000)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=git.STREAM_CHUNK * 4)
    packet = os.urandom(git.BULK_READ)
    reader.feed_data(packet)
    loop.call_later(git.GATHER / 4, reader.feed_data, packet)
    loop.call_later(git.GATHER / 2, reader.feed_data, packet)
    chunks = git.read_chunks(reader)
    assert await anext(chunks) == packet * 3
    reader.feed_eof()
    assert [c async for c in chunks] == []


async def test_a_bulk_read_goes_once_full_and_leaves_the_rest() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    packet = os.urandom(git.BULK_READ)
    reader.feed_data(packet)
    loop.call_later(git.GATHER / 4, reader.feed_data, packet + b"rest")
    chunks = git.read_chunks(reader, 2 * git.BULK_READ)
    assert await anext(chunks) == packet * 2
    reader.feed_eof()
    assert [c async for c in chunks] == [b"rest"]


async def test_a_bulk_read_goes_at_the_end_of_gits_output() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    packet = os.urandom(git.BULK_READ)
    reader.feed_data(packet)
    loop.call_later(git.GATHER / 4, reader.feed_eof)
    assert [c async for c in git.read_chunks(reader)] == [packet]


async def test_a_bulk_read_goes_after_gather_when_git_writes_nothing_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large reply after which git waits for the client (a long ref
    advertisement) is held at most GATHER."""
    # Stretched so that a busy machine cannot reorder the two events.
    monkeypatch.setattr(git, "GATHER", 0.02)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    packet = os.urandom(git.BULK_READ)
    reader.feed_data(packet)
    loop.call_later(0.5, reader.feed_data, b"later")
    chunks = git.read_chunks(reader)
    assert await anext(chunks) == packet
    assert await anext(chunks) == b"later"
    reader.feed_eof()
    assert [c async for c in chunks] == []


async def test_a_small_read_does_not_wait_for_more() -> None:
    """Progress, keep-alives and ref lines go out at once, as before."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    reader.feed_data(b"0010\x02progress")
    loop.call_later(0.2, reader.feed_data, b"later")
    chunks = git.read_chunks(reader)
    assert await anext(chunks) == b"0010\x02progress"
    assert await anext(chunks) == b"later"
    reader.feed_eof()
    assert [c async for c in chunks] == []


def _stdout_pipe_size(proc: git.GitProcess) -> int:
    transport = proc.proc._transport  # type: ignore[attr-defined]
    pipe = transport.get_pipe_transport(1).get_extra_info("pipe")
    return int(fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ))


async def test_a_streaming_gits_stdout_pipe_holds_a_whole_stream_chunk(repo: Path) -> None:
    """The default 64 KiB pipe caps every read, and so every message, at 64 KiB."""
    args = ["cat-file", "--batch"]
    async with git.started(args, git_dir=repo / ".git", stdin=True, streams=True) as proc:
        assert _stdout_pipe_size(proc) == git.STREAM_CHUNK
    # Other git processes (long-lived cat-file ones among them) keep the
    # default: a user's pipes share a soft limit of pages.
    async with git.started(args, git_dir=repo / ".git", stdin=True) as proc:
        assert _stdout_pipe_size(proc) < git.STREAM_CHUNK


async def test_only_so_many_streaming_pipes_are_enlarged_at_once(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's pipes share a soft limit of pages: past it every new pipe of
    the node (cat-file's, git's own) would get a single page."""
    monkeypatch.setattr(git, "MAX_ENLARGED_PIPES", 1)
    monkeypatch.setattr(git, "_enlarged", [])
    args = ["cat-file", "--batch"]
    async with git.started(args, git_dir=repo / ".git", stdin=True, streams=True) as first:
        assert _stdout_pipe_size(first) == git.STREAM_CHUNK
        async with git.started(args, git_dir=repo / ".git", stdin=True, streams=True) as second:
            assert _stdout_pipe_size(second) < git.STREAM_CHUNK
    # Both have exited: the next one is enlarged again.
    async with git.started(args, git_dir=repo / ".git", stdin=True, streams=True) as third:
        assert _stdout_pipe_size(third) == git.STREAM_CHUNK


class _ClosedPipe:
    def fileno(self) -> int:
        raise ValueError("I/O operation on closed file")


class _Transport:
    def get_pipe_transport(self, fd: int) -> _Transport:
        return self

    def get_extra_info(self, name: str) -> object:
        return _ClosedPipe()


def test_a_pipe_git_already_closed_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """git that wrote its little and exited before the node got to its pipe
    (a ref advertisement of a small repository): the call goes on (found by
    the bulk benchmark: InfoRefsUploadPack ended INTERNAL)."""
    monkeypatch.setattr(git, "_enlarged", [])

    class Proc:
        returncode = None
        _transport = _Transport()

    git._enlarge_stdout_pipe(Proc())  # type: ignore[arg-type]
    assert git._enlarged == []
