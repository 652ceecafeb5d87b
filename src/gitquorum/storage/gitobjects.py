"""Git objects as protocol messages: revision checks, commit/tag/tree parsing, object reads.

This is the one place commits are parsed into ``GitCommit`` (and signatures into
``CommitAuthor``), so every RPC that returns a commit returns it the same way,
the way Gitaly does:

* ``body`` is the raw message after the header, cut at ``MAX_MESSAGE_SIZE``
  (10 KiB) while ``body_size`` keeps the full length, so a client knows when it
  must fetch the rest;
* ``subject`` is the first line of the message without trailing CR/LF;
* dates are Unix seconds, with the offset as written in the object (b"+0100");
  a date that does not parse becomes Go's maximum time, as in Gitaly;
* ``signature_type`` comes from the first line of a ``gpgsig`` header;
* trailers, when asked for, match what
  ``git show --format=%(trailers:unfold,separator=%x00)`` gives, parsed the
  way Gitaly parses that output (at most 64, keys up to 128 and values up to
  512 bytes).

Object reads go through the node's long-lived ``cat-file`` processes; the
helpers here never start one git process per object.
"""

from __future__ import annotations

import contextlib
import posixpath
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

from gitquorum.errors import InvalidArgument
from gitquorum.gitaly import shared_pb2
from gitquorum.storage import git
from gitquorum.storage.catfile import BatchProcess, CatFileCache, ObjectInfo, ObjectNotFound
from gitquorum.storage.locator import RepoPath

MAX_MESSAGE_SIZE = 10 * 1024
# Go's largest time value: what Gitaly reports for a date it cannot parse.
FALLBACK_SECONDS = (1 << 63) - 62135596801
MAX_COMMIT_DATE = 1 << 53

MAX_TRAILERS = 64
MAX_TRAILER_KEY = 128
MAX_TRAILER_VALUE = 512

# Blobs up to this size are read whole and the cat-file process released before
# the first message goes out, so a slow client never holds up other readers.
BUFFERED_BLOB_LIMIT = 8 * 1024 * 1024

TREE_MODE = 0o040000
GITLINK_MODE = 0o160000

_HEX40 = re.compile(rb"^[0-9a-f]{40}$")
_DECIMAL = re.compile(rb"[+-]?[0-9]+")
# Object names that make ``cat-file --batch`` die instead of answering "missing".
_FATAL_NAME = re.compile(rb":\.\.?/|@\{(?i:u|push)")
_SPACE = b" \t\n\r"
_GO_SPACE = b" \t\n\r\v\f"
_SIGNATURES = {
    b"-----BEGIN SIGNED MESSAGE-----": shared_pb2.X509,
    b"-----BEGIN PGP MESSAGE-----": shared_pb2.PGP,
    b"-----BEGIN PGP SIGNATURE-----": shared_pb2.PGP,
    b"-----BEGIN SSH SIGNATURE-----": shared_pb2.SSH,
}


# --- revision and object-name checks -------------------------------------------------------


def validate_revision(revision: bytes, *, allow_empty: bool = False) -> None:
    """Reject revisions Gitaly rejects, with Gitaly's messages (INVALID_ARGUMENT)."""
    if not revision:
        if allow_empty:
            return
        raise InvalidArgument("empty revision")
    if revision.startswith(b"-"):
        raise InvalidArgument("revision can't start with '-'")
    if b"\x00" in revision:
        raise InvalidArgument("revision can't contain NUL")
    if any(c in revision for c in (b" ", b"\t", b"\n", b"\r")):
        raise InvalidArgument("revision can't contain whitespace")
    if b":" in revision:
        raise InvalidArgument("revision can't contain ':'")
    if b"\\" in revision:
        raise InvalidArgument("revision can't contain '\\'")


def is_object_id(value: str | bytes) -> bool:
    raw = value.encode() if isinstance(value, str) else value
    return bool(_HEX40.match(raw))


def safe_object_name(name: bytes) -> bool:
    """Whether ``name`` can be handed to a shared cat-file process.

    Relative paths (``rev:./x``) and upstream/push shorthands make cat-file
    exit instead of answering "missing"; such names are treated as missing.
    """
    return bool(name) and b"\n" not in name and b"\x00" not in name and not _FATAL_NAME.search(name)


def normalize_path(path: bytes) -> bytes | None:
    """A request path as a tree path: trailing slashes dropped, "." = the root (b"").

    Returns None for paths no tree can contain (empty, ``..`` or ``.`` components).
    """
    if path in (b".", b"./"):
        return b""
    stripped = path.rstrip(b"/") if len(path) > 1 else path
    if not stripped or b"\n" in stripped or b"\x00" in stripped:
        return None
    parts = stripped.split(b"/")
    if any(p in (b"", b".", b"..") for p in parts):
        return None
    return stripped


# --- commits and signatures -------------------------------------------------------------------


def parse_author(
    value: bytes, into: shared_pb2.CommitAuthor | None = None
) -> shared_pb2.CommitAuthor:
    """``Name <email> <seconds> <offset>`` as a CommitAuthor, tolerating damage like Gitaly.

    ``into``: fill that (empty) message instead of a new one.
    """
    author = shared_pb2.CommitAuthor() if into is None else into
    name, sep, rest = value.partition(b"<")
    author.name = name.removesuffix(b" ")
    if not sep:
        return author
    email, sep, rest = rest.partition(b">")
    if not sep:
        return author
    author.email = email
    fields = rest.split()
    if not fields:
        return author
    seconds = int(fields[0]) if _DECIMAL.fullmatch(fields[0]) else FALLBACK_SECONDS
    if seconds > MAX_COMMIT_DATE or seconds < 0:
        seconds = FALLBACK_SECONDS
    author.date.seconds = seconds
    if len(fields) == 2:
        author.timezone = fields[1]
    return author


def _signature_type(first_line: bytes) -> int:
    return _SIGNATURES.get(first_line.rstrip(b"\n"), shared_pb2.NONE)


def subject_of(message: bytes) -> bytes:
    return message.split(b"\n", 1)[0].rstrip(b"\r\n")


def parse_commit(
    oid: str, data: bytes, *, trailers: bool = False, into: shared_pb2.GitCommit | None = None
) -> shared_pb2.GitCommit:
    """A raw commit object as a GitCommit (see the module docstring for the rules).

    ``into``: fill that (empty) message, e.g. a field of a response, instead
    of building one to copy there.
    """
    commit = shared_pb2.GitCommit() if into is None else into
    commit.id = oid
    # Continuation lines of multi-line headers (gpgsig) start with a space, so
    # the first empty line always ends the header.
    header, _sep, message = data.partition(b"\n\n")
    for line in header.split(b"\n"):
        if not line or line.startswith(b" "):
            continue
        key, sep, value = line.partition(b" ")
        if not sep:
            continue
        if key == b"parent":
            commit.parent_ids.append(value.decode(errors="replace"))
        elif key == b"author":
            parse_author(value, commit.author)
        elif key == b"committer":
            parse_author(value, commit.committer)
        elif key == b"gpgsig":
            commit.signature_type = _signature_type(value)  # type: ignore[assignment]
        elif key == b"tree":
            commit.tree_id = value.decode(errors="replace")
        elif key == b"encoding":
            commit.encoding = value.decode(errors="replace")
    if message:
        commit.subject = subject_of(message)
        commit.body_size = len(message)
        commit.body = message[:MAX_MESSAGE_SIZE]
    if trailers:
        commit.trailers.extend(parse_trailers(message))
    return commit


@dataclass(frozen=True)
class TagHeader:
    """The parts of an annotated tag object the services use."""

    oid: str
    object: str
    type: str
    name: bytes
    tagger: shared_pb2.CommitAuthor | None
    message: bytes


def parse_tag(oid: str, data: bytes) -> TagHeader:
    header, _sep, message = data.partition(b"\n\n")
    target = kind = ""
    name = b""
    tagger: shared_pb2.CommitAuthor | None = None
    for line in header.split(b"\n"):
        key, sep, value = line.partition(b" ")
        if not sep:
            continue
        if key == b"object":
            target = value.decode(errors="replace")
        elif key == b"type":
            kind = value.decode(errors="replace")
        elif key == b"tag" and not name:
            name = value
        elif key == b"tagger":
            tagger = parse_author(value)
    return TagHeader(oid, target, kind, name, tagger, message)


# --- trailers (git's trailer.c rules for %(trailers), then Gitaly's parser) ------------------


def _is_blank(line: bytes) -> bool:
    return not line.rstrip(b"\n").strip(_SPACE)


def _find_separator(line: bytes) -> int:
    """Position of the ':' ending a trailer token, or -1 (git's find_separator)."""
    whitespace_found = False
    for i, c in enumerate(line):
        if c == 0x3A:  # ':'
            return i
        if not whitespace_found and (chr(c).isascii() and (chr(c).isalnum() or c == 0x2D)):
            continue
        if i != 0 and c in (0x20, 0x09):
            whitespace_found = True
            continue
        break
    return -1


def _lines(buf: bytes) -> list[tuple[int, bytes]]:
    """(offset, line including its LF) for every line of ``buf``."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(buf):
        end = buf.find(b"\n", pos)
        end = len(buf) if end < 0 else end + 1
        out.append((pos, buf[pos:end]))
        pos = end
    return out


_CUT_LINE = b"# ------------------------ >8 ------------------------\n"
_GIT_GENERATED_PREFIXES = (b"Signed-off-by: ", b"(cherry picked from commit ")


def _ignored_tail(buf: bytes) -> int:
    """Length of the trailing comments, blank lines and old conflict lists git ignores."""
    cutoff = len(buf)
    if buf.startswith(_CUT_LINE):
        cutoff = 0
    else:
        found = buf.find(b"\n" + _CUT_LINE)
        if found >= 0:
            cutoff = found + 1
    boc = 0
    in_conflicts = False
    for offset, line in _lines(buf[:cutoff]):
        if line.startswith((b"#", b"\n")):
            if not boc:
                boc = offset
        elif line.startswith(b"Conflicts:\n"):
            in_conflicts = True
            if not boc:
                boc = offset
        elif in_conflicts and line.startswith(b"\t"):
            pass
        elif boc:
            boc = 0
            in_conflicts = False
    return len(buf) - boc if boc else len(buf) - cutoff


def _skip_blank_lines(message: bytes) -> bytes:
    """git's pretty-printer starts the message at its first non-blank line."""
    pos = 0
    while pos < len(message):
        end = message.find(b"\n", pos)
        end = len(message) if end < 0 else end + 1
        if message[pos:end].strip(_SPACE):
            break
        pos = end
    return message[pos:]


def _trailer_block(message: bytes) -> bytes:
    message = _skip_blank_lines(message)
    end = len(message) - _ignored_tail(message)
    buf = message[:end]
    lines = _lines(buf)
    end_of_title = len(buf)
    for offset, line in lines:
        if line.startswith(b"#"):
            continue
        if _is_blank(line):
            end_of_title = offset
            break
    only_spaces = True
    recognized_prefix = False
    trailer_lines = non_trailer_lines = possible_continuation = 0
    for offset, line in reversed(lines):
        if offset < end_of_title:
            break
        if line.startswith(b"#"):
            non_trailer_lines += possible_continuation
            possible_continuation = 0
            continue
        if _is_blank(line):
            if only_spaces:
                continue
            non_trailer_lines += possible_continuation
            if (recognized_prefix and trailer_lines * 3 >= non_trailer_lines) or (
                trailer_lines and not non_trailer_lines
            ):
                return buf[offset + len(line) :]
            return b""
        only_spaces = False
        if line.startswith(_GIT_GENERATED_PREFIXES):
            trailer_lines += 1
            possible_continuation = 0
            recognized_prefix = True
            continue
        if _find_separator(line) >= 1 and line[:1] not in (b" ", b"\t", b"\n", b"\r"):
            trailer_lines += 1
            possible_continuation = 0
        elif line[:1] in (b" ", b"\t", b"\n", b"\r"):
            possible_continuation += 1
        else:
            non_trailer_lines += 1 + possible_continuation
            possible_continuation = 0
    return b""


def _unfold(value: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(value):
        c = value[i]
        i += 1
        if c == 0x0A:
            while i < len(value) and value[i] in _SPACE:
                i += 1
            out += b" "
        else:
            out.append(c)
    return bytes(out).strip(_SPACE)


def trailer_lines(message: bytes) -> list[bytes]:
    """What ``%(trailers:unfold,separator=%x00)`` prints, one item per trailer-block line."""
    block = _trailer_block(message)
    items: list[bytearray] = []
    last: bytearray | None = None
    for _offset, line in _lines(block):
        if last is not None and line[:1] in (b" ", b"\t", b"\n", b"\r"):
            last += line
            continue
        item = bytearray(line)
        items.append(item)
        last = item if _find_separator(line) >= 1 else None
    out: list[bytes] = []
    for item in items:
        raw = bytes(item)
        pos = _find_separator(raw)
        if pos >= 1:
            token = raw[:pos].strip(_SPACE)
            value = _unfold(raw[pos + 1 :].strip(_SPACE))
            out.append(token + b": " + value)
        else:
            out.append(raw.rstrip(_SPACE))
    return out


def parse_trailers(message: bytes) -> list[shared_pb2.CommitTrailer]:
    """Commit trailers as Gitaly reports them."""
    result: list[shared_pb2.CommitTrailer] = []
    for item in trailer_lines(message):
        if len(result) >= MAX_TRAILERS:
            break
        pos = item.find(b":")
        if pos <= 0:
            continue
        key, value = item[:pos], item[pos + 1 :].strip(_GO_SPACE)
        if len(key) > MAX_TRAILER_KEY or len(value) > MAX_TRAILER_VALUE:
            break
        result.append(shared_pb2.CommitTrailer(key=key, value=value))
    return result


# --- trees --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TreeItem:
    """One entry of a tree object; ``path`` is relative to the repository root."""

    mode: int
    path: bytes
    oid: str

    @property
    def name(self) -> bytes:
        return self.path.rsplit(b"/", 1)[-1]

    @property
    def kind(self) -> str:
        """ "tree", "commit" (a submodule gitlink) or "blob"."""
        if self.mode & 0o170000 == TREE_MODE:
            return "tree"
        if self.mode == GITLINK_MODE:
            return "commit"
        return "blob"


def parse_tree(data: bytes, prefix: bytes = b"") -> list[TreeItem]:
    """Entries of a raw (binary) tree object, paths prefixed with ``prefix/``."""
    items: list[TreeItem] = []
    pos = 0
    lead = prefix + b"/" if prefix else b""
    while pos < len(data):
        space = data.index(b" ", pos)
        nul = data.index(b"\x00", space)
        mode = int(data[pos:space], 8)
        name = data[space + 1 : nul]
        oid = data[nul + 1 : nul + 21].hex()
        if len(oid) != 40:
            raise ValueError("truncated tree object")
        items.append(TreeItem(mode, lead + name, oid))
        pos = nul + 21
    return items


# --- reads through the cat-file cache ---------------------------------------------------------


async def read_commit(
    batch: BatchProcess, revision: bytes, *, trailers: bool = False
) -> shared_pb2.GitCommit | None:
    """The commit a revision peels to, or None when there is none."""
    if not safe_object_name(revision):
        return None
    try:
        info, data = await batch.read(revision + b"^{commit}")
    except ObjectNotFound:
        return None
    if info.type != "commit":
        return None
    return parse_commit(info.oid, data, trailers=trailers)


def _commit_names(revisions: Sequence[bytes]) -> list[bytes]:
    # A name cat-file cannot be given is asked as b"", which names nothing.
    return [rev + b"^{commit}" if safe_object_name(rev) else b"" for rev in revisions]


def _commit_found(answer: tuple[ObjectInfo, bytes] | None) -> tuple[str, bytes] | None:
    if answer is None or answer[0].type != "commit":
        return None
    return answer[0].oid, answer[1]


async def read_commit_objects(
    catfile: CatFileCache, repo: RepoPath, revisions: Sequence[bytes]
) -> list[tuple[str, bytes] | None]:
    """(id, raw commit) each revision peels to, or None; under one hold, asked together."""
    names = _commit_names(revisions)
    async with catfile.batch(repo) as batch:
        answers = await batch.read_many([name or b"\n" for name in names])
    return [_commit_found(answer) for answer in answers]


async def each_commit_object(
    batch: BatchProcess, revisions: Sequence[bytes]
) -> AsyncGenerator[tuple[str, bytes] | None, None]:
    """``read_commit_objects`` one by one as git answers (see ``BatchProcess.read_each``);
    close it (``contextlib.aclosing``) before releasing ``batch``."""
    names = [name or b"\n" for name in _commit_names(revisions)]
    async with contextlib.aclosing(batch.read_each(names)) as answers:
        async for answer in answers:
            yield _commit_found(answer)


async def read_commits(
    catfile: CatFileCache, repo: RepoPath, revisions: Sequence[bytes]
) -> list[shared_pb2.GitCommit | None]:
    """Several commits under one hold of the repository's cat-file process, asked together."""
    return [
        None if found is None else parse_commit(*found)
        for found in await read_commit_objects(catfile, repo, revisions)
    ]


async def read_tree(batch: BatchProcess, revision: bytes, path: bytes) -> list[TreeItem] | None:
    """Entries of the tree at ``<revision>:<path>`` (b"" = root); None when it is not a tree."""
    name = revision + b"^{tree}" if not path else revision + b":" + path
    if not safe_object_name(name):
        return None
    try:
        info, data = await batch.read(name)
    except ObjectNotFound:
        return None
    if info.type != "tree":
        return None
    return parse_tree(data, path)


async def find_entry(batch: BatchProcess, revision: bytes, path: bytes) -> TreeItem | None:
    """The entry (with its mode) that ``path`` names in ``revision``'s tree."""
    normalized = normalize_path(path)
    if not normalized:
        return None
    parent = posixpath.dirname(normalized)
    entries = await read_tree(batch, revision, parent)
    if entries is None:
        return None
    for entry in entries:
        if entry.path == normalized:
            return entry
    return None


@dataclass(frozen=True)
class BlobRead:
    """A blob being read: ``info`` first, then ``chunks`` of at most ``limit`` bytes in all."""

    info: ObjectInfo
    chunks: AsyncIterator[bytes]


@contextlib.asynccontextmanager
async def open_blob(
    catfile: CatFileCache,
    repo: RepoPath,
    name: bytes,
    limit: int = -1,
    *,
    want: str | None = "blob",
    chunk: int = git.CHUNK,
) -> AsyncIterator[BlobRead | None]:
    """Open an object for streaming; yields None when it is missing or not of type ``want``.

    Objects up to ``BUFFERED_BLOB_LIMIT`` bytes are read whole and the shared
    cat-file process is released before the caller sends anything; larger ones
    are streamed while the process is held, so memory stays bounded.
    """
    if not safe_object_name(name):
        yield None
        return
    async with catfile.batch(repo) as batch:
        try:
            first_info = await batch.header(name)
        except ObjectNotFound:
            yield None
            return
        if first_info.size <= BUFFERED_BLOB_LIMIT:
            # Small: read in one go, no chunk by chunk loop.
            data = await batch.body(first_info)
            if want is not None and first_info.type != want:
                yield None
                return
            buffered = data if limit < 0 else data[:limit]
        else:
            # BatchProcess.stream is an async generator; closing it early marks the
            # process out of step (broken) instead of leaving unread bytes behind.
            stream = cast(
                AsyncGenerator[tuple[ObjectInfo, bytes], None],
                batch.stream(name, limit, chunk, info=first_info),
            )
            try:
                _info, first_chunk = await stream.__anext__()
            except StopAsyncIteration:
                yield None
                return
            if want is not None and first_info.type != want:
                # Drain so the process stays in step for the next reader.
                async for _ in stream:
                    pass
                yield None
                return
            wanted = first_info.size if limit < 0 else min(limit, first_info.size)
            if wanted <= BUFFERED_BLOB_LIMIT:
                parts = [first_chunk]
                async for _info, data in stream:
                    parts.append(data)
                buffered = b"".join(parts)
            else:

                async def held() -> AsyncIterator[bytes]:
                    if first_chunk:
                        yield first_chunk
                    async for _info, data in stream:
                        if data:
                            yield data

                try:
                    yield BlobRead(first_info, held())
                finally:
                    # Marks the process broken if the caller stopped before the end,
                    # before the lock is released to the next reader.
                    await stream.aclose()
                return

    yield BlobRead(first_info, chunked(buffered, chunk))


class _DataMessage(Protocol):
    data: bytes


M = TypeVar("M", bound=_DataMessage)


async def data_messages(
    first: M, chunks: AsyncIterator[bytes], new: Callable[[], M]
) -> AsyncIterator[M]:
    """A blob's answer: ``first`` (its header) carries the first chunk, ``new()`` the others.

    ``first`` goes out even when there is no data.
    """
    message: M | None = first
    async for data in chunks:
        if message is None:
            message = new()
        message.data = data
        yield message
        message = None
    if message is not None:
        yield message


async def chunked(data: bytes, chunk: int = git.CHUNK) -> AsyncIterator[bytes]:
    """``data`` in pieces of at most ``chunk`` bytes (none for empty data)."""
    for offset in range(0, len(data), chunk):
        yield data[offset : offset + chunk]
