"""Stream a pack-protocol git command (upload-pack, receive-pack, upload-archive).

The SSH and smart-HTTP services differ only in how they frame bytes; the
process handling is the same and lives here: request data is written to
git's stdin while git's stdout and stderr are read concurrently, so neither
side can fill a pipe and deadlock the other. Output is handed over through a
small bounded queue, which keeps memory flat and lets a slow client slow git
down instead of buffering the whole pack.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from gitquorum.errors import Canceled, Internal, InvalidArgument
from gitquorum.storage import git

_Request = TypeVar("_Request")

STDOUT = 1
STDERR = 2
# Enough buffered output to keep git busy while the client catches up: with
# messages of up to 256 KiB (git.STREAM_CHUNK), 1 MiB per RPC, besides the
# reader's buffer (at most 2 MiB) and the pipe.
_QUEUE_DEPTH = 4
# How much stderr a failure message quotes.
_STDERR_TAIL = 4096
# git's message when the other side of the pack protocol went away mid-stream.
HUNG_UP = b"fatal: the remote end hung up unexpectedly\n"


# Gitaly serves fetches with these so partial clones and fetch-by-sha work.
UPLOAD_PACK_CONFIG = [
    "-c",
    "uploadpack.allowFilter=true",
    "-c",
    "uploadpack.allowAnySHA1InWant=true",
]
# Housekeeping is a maintenance RPC's job, not a detached gc after each push.
RECEIVE_PACK_CONFIG = ["-c", "receive.autogc=false"]

# Config keys that make git run a program or read more config: a request
# must not be able to turn a fetch into command execution on the node.
_UNSAFE_KEYS = frozenset(
    {
        "core.hookspath",
        "core.fsmonitor",
        "core.sshcommand",
        "core.gitproxy",
        "core.alternaterefscommand",
        "core.pager",
        "core.editor",
        "core.askpass",
        "uploadpack.packobjectshook",
        "credential.helper",
        "gpg.program",
    }
)
_UNSAFE_SECTIONS = ("include.", "includeif.")


def config_args(options: Sequence[str]) -> list[str]:
    """``-c`` arguments for a request's git_config_options, refusing unsafe keys."""
    args = git.config_args(options)
    for option in options:
        key = option.partition("=")[0].strip().lower()
        if key in _UNSAFE_KEYS or key.startswith(_UNSAFE_SECTIONS):
            raise InvalidArgument(f"git config option {key!r} is not allowed")
    return args


def push_env(gl_id: str, gl_repository: str, gl_username: str, protocol: str) -> dict[str, str]:
    """Who is pushing, in the variables GitLab's hooks read."""
    return {
        "GL_ID": gl_id,
        "GL_REPOSITORY": gl_repository,
        "GL_USERNAME": gl_username,
        "GL_PROTOCOL": protocol,
    }


async def first_request(requests: AsyncIterator[_Request]) -> _Request:
    """The first message of a client stream, which carries the repository."""
    try:
        return await anext(requests)
    except StopAsyncIteration:
        raise InvalidArgument("empty request stream: no first message") from None


async def payload(requests: AsyncIterator[_Request], field: str) -> AsyncIterator[bytes]:
    """The ``field`` bytes of every message after the first one."""
    async for request in requests:
        yield getattr(request, field)


@dataclass(frozen=True)
class Output:
    """A chunk of git's stdout (``STDOUT``) or stderr (``STDERR``)."""

    fd: int
    data: bytes


@dataclass(frozen=True)
class Exit:
    """git has exited and all its output has been delivered."""

    code: int
    # The last few KiB of stderr, for error messages.
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.code == 0

    def error(self, what: str) -> Internal | Canceled | InvalidArgument:
        """The RPC error for a failed command, as Gitaly reports it; a request
        git could not parse is the client's fault, in git's own words."""
        if self.stderr == HUNG_UP:
            return Canceled(f"user canceled the {what}")
        text = self.stderr.decode(errors="replace").strip()
        if is_bad_request(text):
            return InvalidArgument(f"invalid {what} request: {_last_line(text)}")
        return Internal(f"cmd wait: exit status {self.code}, stderr: {text!r}")


# What git's pack protocol says when the bytes it was sent are not a valid
# request (pkt-line.c, upload-pack.c, receive-pack.c): the client sent them.
_BAD_REQUEST_MARKERS = (
    "protocol error",
    "not our ref",
    "expected flush",
    "expected shallow",
    "unknown capability",
    "bad line length",
)


def is_bad_request(stderr: str) -> bool:
    """Whether git failed because of what the request said (pure; table-tested)."""
    lowered = stderr.lower()
    return any(marker in lowered for marker in _BAD_REQUEST_MARKERS)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


class _Done:
    """Marks the end of one output stream in the queue."""


_DONE = _Done()
_Item = Output | _Done | Exception


async def _read(reader: asyncio.StreamReader, fd: int, queue: asyncio.Queue[_Item]) -> None:
    # Nothing is queued on cancellation: nobody reads the queue any more and a
    # put on a full queue would never return.
    try:
        async for chunk in git.read_chunks(reader):
            await queue.put(Output(fd, chunk))
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await queue.put(exc)
        return
    await queue.put(_DONE)


async def _feed(
    process: git.GitProcess, stdin: AsyncIterable[bytes], queue: asyncio.Queue[_Item]
) -> None:
    try:
        async for chunk in stdin:
            if not chunk:
                continue
            process.stdin.write(chunk)
            await process.stdin.drain()
    except (BrokenPipeError, ConnectionResetError):
        # git stopped reading (it exited or refused the request); its exit
        # status and stderr tell the client why, so the pipe error adds nothing.
        return
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # A broken request stream ends the RPC with its own error.
        await queue.put(exc)
        return
    # The client half-closed: git sees EOF and can finish.
    await process.close_stdin()


async def stream(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: AsyncIterable[bytes] | None = None,
    cwd: Path | None = None,
) -> AsyncGenerator[Output | Exit, None]:
    """Run git, pump ``stdin`` into it, yield its output and finally its ``Exit``.

    Closing the generator early (the client went away) kills git.
    """
    queue: asyncio.Queue[_Item] = asyncio.Queue(_QUEUE_DEPTH)
    tail = b""
    async with git.started(
        args, env=env, cwd=cwd, stdin=stdin is not None, streams=True
    ) as process:
        tasks = [
            asyncio.create_task(_read(process.stdout, STDOUT, queue)),
            asyncio.create_task(_read(process.stderr, STDERR, queue)),
        ]
        feeder = asyncio.create_task(_feed(process, stdin, queue)) if stdin is not None else None
        try:
            open_streams = 2
            while open_streams:
                item = await queue.get()
                if isinstance(item, _Done):
                    open_streams -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    if item.fd == STDERR:
                        tail = (tail + item.data)[-_STDERR_TAIL:]
                    yield item
            code = await process.wait()
        finally:
            for task in [*tasks, feeder]:
                if task is not None and not task.done():
                    task.cancel()
            for task in [*tasks, feeder]:
                if task is not None:
                    with contextlib.suppress(BaseException):
                        await task
    yield Exit(code, tail)
