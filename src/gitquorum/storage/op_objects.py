"""Commit and tag objects as protocol messages, and signatures for new objects.

Operation responses carry the commit a branch or tag points at as a full
``GitCommit``; this reads it through the node's cat-file processes and parses
the raw object the way Gitaly presents it (subject = first line, body capped
at 10 KiB with the full size in ``body_size``).
"""

from __future__ import annotations

import datetime
import zoneinfo

from google.protobuf import timestamp_pb2

from gitquorum.errors import InvalidArgument
from gitquorum.gitaly import shared_pb2
from gitquorum.storage.catfile import CatFileCache, ObjectInfo, ObjectNotFound
from gitquorum.storage.locator import RepoPath

# Gitaly caps commit and tag messages in responses at this size.
MAX_MESSAGE_SIZE = 10 * 1024
# Dates git cannot represent are shown as the last representable second, as Gitaly does.
_MAX_DATE = 253402300799
_MIN_DATE = -62135596800

_SIGNATURE_PREFIXES = (
    (b"-----BEGIN PGP SIGNATURE-----", shared_pb2.PGP),
    (b"-----BEGIN PGP MESSAGE-----", shared_pb2.PGP),
    (b"-----BEGIN SIGNED MESSAGE-----", shared_pb2.X509),
    (b"-----BEGIN SSH SIGNATURE-----", shared_pb2.SSH),
)


def _split_object(raw: bytes) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Header fields (continuation lines folded in) and the message."""
    head, sep, message = raw.partition(b"\n\n")
    if not sep:
        head, message = raw.rstrip(b"\n"), b""
    headers: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\n"):
        if line.startswith(b" ") and headers:
            key, value = headers[-1]
            headers[-1] = (key, value + b"\n" + line[1:])
            continue
        key, _, value = line.partition(b" ")
        headers.append((key, value))
    return headers, message


def parse_signature(value: bytes) -> shared_pb2.CommitAuthor:
    """``Name <email> 1700000000 +0100`` as a CommitAuthor."""
    ident, sep, when = value.rpartition(b"> ")
    if not sep:
        ident, when = value.rstrip(b">"), b""
    name, _, email = ident.partition(b"<")
    fields = when.split()
    seconds = _MAX_DATE
    timezone = b"+0000"
    if fields:
        try:
            seconds = int(fields[0])
        except ValueError:
            seconds = _MAX_DATE
        if not _MIN_DATE <= seconds <= _MAX_DATE:
            seconds = _MAX_DATE
    if len(fields) > 1:
        timezone = fields[1]
    return shared_pb2.CommitAuthor(
        name=name.strip(),
        email=email,
        date=timestamp_pb2.Timestamp(seconds=seconds),
        timezone=timezone,
    )


def _subject(message: bytes) -> bytes:
    return message.split(b"\n", 1)[0].rstrip(b"\r\n")


def parse_commit(oid: str, raw: bytes) -> shared_pb2.GitCommit:
    headers, message = _split_object(raw)
    commit = shared_pb2.GitCommit(
        id=oid,
        subject=_subject(message),
        body=message[:MAX_MESSAGE_SIZE],
        body_size=len(message),
    )
    for key, value in headers:
        if key == b"tree":
            commit.tree_id = value.decode(errors="replace")
        elif key == b"parent":
            commit.parent_ids.append(value.decode(errors="replace"))
        elif key == b"author":
            commit.author.CopyFrom(parse_signature(value))
        elif key == b"committer":
            commit.committer.CopyFrom(parse_signature(value))
        elif key == b"encoding":
            commit.encoding = value.decode(errors="replace")
        elif key in (b"gpgsig", b"gpgsig-sha256"):
            for prefix, kind in _SIGNATURE_PREFIXES:
                if value.startswith(prefix):
                    commit.signature_type = kind  # type: ignore[assignment]
                    break
    return commit


def parse_tag_message(raw: bytes) -> bytes:
    _, message = _split_object(raw)
    return message


async def read_commit(catfile: CatFileCache, repo: RepoPath, oid: str) -> shared_pb2.GitCommit:
    info, raw = await catfile.read(repo, oid.encode())
    if info.type != "commit":
        raise ObjectNotFound(oid)
    return parse_commit(info.oid, raw)


async def resolve(catfile: CatFileCache, repo: RepoPath, revision: bytes) -> ObjectInfo | None:
    """The object a revision names, or None (no exception for unknown revisions)."""
    if not revision or b"\n" in revision or b"\x00" in revision:
        return None
    try:
        return await catfile.info(repo, revision)
    except ObjectNotFound:
        return None


def _offset(zone: str, seconds: int) -> str:
    """``+HHMM`` of an IANA zone at a given instant; UTC when the zone is unknown."""
    delta = datetime.timedelta(0)
    if zone:
        try:
            moment = datetime.datetime.fromtimestamp(seconds, zoneinfo.ZoneInfo(zone))
            delta = moment.utcoffset() or datetime.timedelta(0)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError, OverflowError):
            delta = datetime.timedelta(0)
    minutes = int(delta.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}{minutes % 60:02d}"


def signature_time(
    timestamp: timestamp_pb2.Timestamp | None, user: shared_pb2.User | None, now: float
) -> tuple[int, str]:
    """(unix seconds, ``+HHMM``) for a new object: the request's time, else now."""
    if timestamp is not None:
        if not (_MIN_DATE <= timestamp.seconds <= _MAX_DATE) or not (
            0 <= timestamp.nanos < 1_000_000_000
        ):
            raise InvalidArgument("invalid timestamp: out of range")
        seconds = timestamp.seconds
    else:
        seconds = int(now)
    return seconds, _offset(user.timezone if user is not None else "", seconds)


def check_identity(value: bytes, what: str) -> str:
    """A name or email usable in a commit or tag header."""
    text = value.strip()
    if not text:
        raise InvalidArgument(
            "commit: failed to parse signature - Signature cannot have an empty name or email"
        )
    if any(c in text for c in (b"<", b">", b"\n", b"\x00")):
        raise InvalidArgument(f"{what} contains disallowed characters")
    # git takes identities as bytes; surrogateescape carries non-UTF-8 bytes through env.
    return text.decode("utf-8", errors="surrogateescape")
