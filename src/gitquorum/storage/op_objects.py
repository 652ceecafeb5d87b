"""Object lookups and signatures for the objects operations write.

Parsing lives in ``gitobjects`` (one GitCommit shape for every RPC); this adds
what writing RPCs need: revision resolution that never trips the shared
cat-file process, and the identity and date of new commits and tags.
"""

from __future__ import annotations

import datetime
import zoneinfo

from google.protobuf import timestamp_pb2

from gitquorum.errors import InvalidArgument
from gitquorum.gitaly import shared_pb2
from gitquorum.storage import gitobjects
from gitquorum.storage.catfile import CatFileCache, ObjectInfo, ObjectNotFound
from gitquorum.storage.locator import RepoPath

# Dates a commit or tag header can carry (protobuf Timestamp's range).
_MAX_DATE = 253402300799
_MIN_DATE = -62135596800


async def read_commit(catfile: CatFileCache, repo: RepoPath, oid: str) -> shared_pb2.GitCommit:
    info, raw = await catfile.read(repo, oid.encode())
    if info.type != "commit":
        raise ObjectNotFound(oid)
    return gitobjects.parse_commit(info.oid, raw)


async def resolve(catfile: CatFileCache, repo: RepoPath, revision: bytes) -> ObjectInfo | None:
    """The object a revision names, or None (no exception for unknown revisions)."""
    if not gitobjects.safe_object_name(revision):
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
