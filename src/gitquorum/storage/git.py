"""Run the real git CLI asynchronously.

Every git process gets a clean environment (no user or system config, no
prompts) and is killed if the RPC that started it goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import fcntl
import os
import signal
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gitquorum import log
from gitquorum.errors import InvalidArgument

GIT = os.environ.get("GITQUORUM_GIT", "git")
ZERO_OID = "0" * 40
CHUNK = 64 * 1024
# The largest message of git's own output streamed to a client (a clone's or
# fetch's pack, a bundle): every hop (node, proxy, git-ssh or the HTTP gateway)
# pays per message, so fuller messages cost less CPU per byte. Measured with
# `bench/proxy_bench.py --phases bulk`, a 54.5 MB clone: 256 KiB instead of
# 64 KiB cut the servers' CPU per clone by 19% through git-ssh and 35% through
# the gateway (docs/benchmarks.md).
STREAM_CHUNK = 256 * 1024
# A read at least this large means git is streaming bulk data (its side-band
# packets carry up to 65,520 bytes): the message waits up to GATHER seconds for
# git's following writes, so that packs leave in fewer, fuller messages. It
# goes at once when it is already full or git's output has ended; git goes on
# writing meanwhile (into the pipe and the reader's buffer), so a transfer's
# rate is unchanged. The cost is latency: a bulk write after which git waits
# for the client (a ref advertisement of several hundred refs) reaches it
# GATHER later.
BULK_READ = 32 * 1024
GATHER = 0.002
# Streaming git processes of this process whose stdout pipe was enlarged, and
# how many at most at once (see _enlarge_stdout_pipe).
_enlarged: list[asyncio.subprocess.Process] = []
MAX_ENLARGED_PIPES = 32
# How long git gets to clean up after SIGTERM before it is killed.
_TERMINATE_GRACE = 2.0

_log = log.get("gitquorum.storage.git")

# Descriptors every git started in this context inherits (``inheriting``).
_inherited: contextvars.ContextVar[tuple[int, ...]] = contextvars.ContextVar(
    "gitquorum_git_inherited_fds", default=()
)


@contextlib.contextmanager
def inheriting(fd: int) -> Iterator[None]:
    """Every git started inside the block (and in tasks it creates) inherits ``fd``.

    For a lock that must outlive this process while its git runs: a flock
    belongs to the open file, shared with the children, so it is released
    only when the last of them has closed it too (replication_fence).
    """
    token = _inherited.set((*_inherited.get(), fd))
    try:
        yield
    finally:
        _inherited.reset(token)


# Durable before the committed vote: git's defaults fsync neither loose objects
# nor references, and a node that lost power after voting "committed" could come
# back without a write etcd records it as holding. These settings make every
# object, pack, derived file (commit-graph, multi-pack-index, …) and reference
# git writes reach the disk before git reports success (git >= 2.36).
DURABILITY_CONFIG = {
    "core.fsync": "objects,derived-metadata,reference",
    "core.fsyncMethod": "fsync",
}

_BASE_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "LC_ALL": "C",
    "LANG": "C",
    # Objects read as what they are, never through refs/replace/* (which a
    # client can push and replication copies): answers are kept per object id
    # and long-lived cat-file processes would load replace refs only once.
    "GIT_NO_REPLACE_OBJECTS": "1",
    # Passed as environment configuration so that every git the node runs gets
    # it, including those git itself starts (hooks, pack-objects, index-pack).
    "GIT_CONFIG_COUNT": str(len(DURABILITY_CONFIG)),
    **{f"GIT_CONFIG_KEY_{i}": key for i, key in enumerate(DURABILITY_CONFIG)},
    **{f"GIT_CONFIG_VALUE_{i}": value for i, value in enumerate(DURABILITY_CONFIG.values())},
}


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(_BASE_ENV)
    env.setdefault("HOME", "/nonexistent")
    if extra:
        env.update(extra)
    return env


def config_args(options: Sequence[str]) -> list[str]:
    """Turn ``key=value`` strings from a request into ``-c`` arguments."""
    args: list[str] = []
    for option in options:
        key, sep, _value = option.partition("=")
        if not sep or not key or "\x00" in option or "\n" in key:
            raise InvalidArgument(f"invalid git config option {option!r}: expected key=value")
        if key.lower().startswith("core.fsync"):
            # A client must not be able to trade the node's durability for speed.
            raise InvalidArgument(f"git config option {key!r} is set by the node")
        args += ["-c", option]
    return args


def protocol_env(git_protocol: str) -> dict[str, str]:
    """GIT_PROTOCOL for v1/v2 requests; anything else means v0."""
    if git_protocol in ("version=1", "version=2"):
        return {"GIT_PROTOCOL": git_protocol}
    return {}


@dataclass(frozen=True)
class GitResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.returncode == 0


class GitProcess:
    """A started git command; ``kill`` is safe to call any number of times."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @property
    def stdin(self) -> asyncio.StreamWriter:
        assert self.proc.stdin is not None
        return self.proc.stdin

    @property
    def stdout(self) -> asyncio.StreamReader:
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def stderr(self) -> asyncio.StreamReader:
        assert self.proc.stderr is not None
        return self.proc.stderr

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                # The whole group: git spawns helpers (pack-objects, index-pack).
                os.killpg(self.proc.pid, signal.SIGKILL)

    def terminate(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    async def wait(self) -> int:
        return await self.proc.wait()

    async def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.is_closing():
            self.proc.stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                # wait_closed() awaits asyncio's own close future: cancelling
                # this task (the RPC ends) would cancel that future, and asyncio
                # later fails to resolve it with an InvalidStateError logged at
                # error level. Shielded, only this wait is abandoned.
                await asyncio.shield(self.proc.stdin.wait_closed())


async def spawn(
    args: Sequence[str],
    *,
    git_dir: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bool = False,
    stderr: bool = True,
    inherit: bool = True,
    streams: bool = False,
) -> GitProcess:
    """``inherit``: False for a process that outlives the operation starting it
    (it must not hold that operation's locks, see ``inheriting``). ``streams``:
    its stdout is relayed to a client in ``STREAM_CHUNK`` messages (a pack, a
    bundle), and gets a pipe that holds one."""
    cmd = [GIT]
    if git_dir is not None:
        cmd.append(f"--git-dir={git_dir}")
    cmd += list(args)
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE if stderr else asyncio.subprocess.DEVNULL,
            env=base_env(env),
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
            limit=STREAM_CHUNK * 4,
            pass_fds=_inherited.get() if inherit else (),
        )
    except OSError as exc:
        if exc.errno == errno.E2BIG:
            # A request field given to git as an argument (a revision, a path)
            # over the kernel's 128 KiB per argument: the request's fault.
            raise InvalidArgument("request too large for git's command line") from exc
        raise
    if streams:
        _enlarge_stdout_pipe(proc)
    return GitProcess(proc)


def _enlarge_stdout_pipe(proc: asyncio.subprocess.Process) -> None:
    """Let git's stdout pipe hold a whole ``STREAM_CHUNK``.

    A pipe holds 64 KiB by default, so no read of it returns more: git is
    stopped whenever the node has not read for a moment, and a read cannot
    take a whole message's worth. Best effort: without it the messages are
    only smaller.

    At most ``MAX_ENLARGED_PIPES`` at once per process, never for long-lived
    processes (``cat-file``): an unprivileged user's pipes share a soft limit
    (``/proc/sys/fs/pipe-user-pages-soft``, 64 MiB by default) with every
    worker, every git and its own pipes, past which the kernel gives every new
    pipe of the user a single page, and the whole node slows down.
    """
    _enlarged[:] = [p for p in _enlarged if p.returncode is None]
    transport = getattr(proc, "_transport", None)
    if len(_enlarged) >= MAX_ENLARGED_PIPES or transport is None:
        return
    try:
        pipe = transport.get_pipe_transport(1).get_extra_info("pipe")
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, STREAM_CHUNK)
    except (AttributeError, OSError, ValueError) as exc:
        # Refused (past the user's limit, a lower pipe-max-size), the pipe
        # already closed (git wrote its little and exited: ValueError), or
        # asyncio's internals changed: the messages are smaller, nothing else.
        _log.debug("git's stdout pipe not enlarged", extra=log.fields(error=str(exc)))
        return
    _enlarged.append(proc)


@contextlib.asynccontextmanager
async def started(
    args: Sequence[str],
    *,
    git_dir: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bool = False,
    streams: bool = False,
) -> AsyncIterator[GitProcess]:
    """Start git and make sure it is dead when the block ends, however it ends."""
    process = await spawn(args, git_dir=git_dir, cwd=cwd, env=env, stdin=stdin, streams=streams)
    try:
        yield process
    finally:
        # SIGTERM first: git removes its lock files on SIGTERM, not on SIGKILL. A
        # git killed while it held a ref's lock (a push whose RPC was cancelled
        # while its hook waited for the vote) left that ref locked for good on
        # the node (found by the chaos tests).
        process.terminate()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(process.wait()), _TERMINATE_GRACE)
        process.kill()
        with contextlib.suppress(Exception):
            await asyncio.shield(process.wait())


async def run(
    args: Sequence[str],
    *,
    git_dir: Path | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
) -> GitResult:
    """Run git to completion and collect its output."""
    async with started(args, git_dir=git_dir, cwd=cwd, env=env, stdin=input is not None) as process:
        stdout, stderr = await process.proc.communicate(input)
        return GitResult(process.proc.returncode or 0, stdout, stderr)


async def read_chunks(
    reader: asyncio.StreamReader, size: int = STREAM_CHUNK
) -> AsyncIterator[bytes]:
    """git's output in chunks of at most ``size`` bytes, each as full as is cheap.

    git writes a side-band packet's 5-byte header and its payload with separate
    ``write()``s, so a plain read often returns a few bytes, and every chunk
    becomes one gRPC message that every hop pays for. After a short read, one
    turn of the event loop takes in what git has already written; after a bulk
    read (``BULK_READ``; stderr too, a burst of hook output), up to ``GATHER``
    (see there). Small output (progress, keep-alives, negotiation) never waits
    for output that is not there.
    """
    while True:
        chunk = await reader.read(size)
        if not chunk:
            return
        if len(chunk) < size:
            # A bulk read (a pack, a bundle) gets a moment for git's next writes;
            # anything smaller (progress, keep-alives, ref lines) one loop turn.
            if len(chunk) >= BULK_READ:
                await _gather(reader, size - len(chunk))
            else:
                await asyncio.sleep(0)
            waiting = _buffered(reader)
            if waiting:
                chunk += await reader.read(min(waiting, size - len(chunk)))
        yield chunk


async def _gather(reader: asyncio.StreamReader, wanted: int) -> None:
    """Give git ``GATHER`` seconds to write more, unless ``wanted`` bytes are
    already buffered or its output has ended.

    A plain sleep: waking at each of git's writes to check for a full message
    gave smaller messages (a 54 MB pack from a slow ``pack-objects``: 830 to
    3,900 messages instead of 290 to 490), since every wake-up let the reader
    go on with a partial one.
    """
    if _buffered(reader) >= wanted or getattr(reader, "_eof", True):
        return
    await asyncio.sleep(GATHER)


def _buffered(reader: asyncio.StreamReader) -> int:
    # StreamReader has no public "bytes available" call; its buffer is stable
    # across CPython releases, and without it we only lose the coalescing.
    buffer = getattr(reader, "_buffer", None)
    return len(buffer) if buffer is not None else 0


async def version() -> str:
    result = await run(["version"])
    return result.stdout.decode().strip().removeprefix("git version ")
