"""Reading one reference from the files backend without starting git.

A hot accessor that only needs to know where one ref points (RefExists,
FindDefaultBranchName) would otherwise spawn ``git show-ref`` or
``git for-each-ref``: milliseconds, where reading a file takes microseconds.
This reads the way git's files backend does: the loose file
``<repo>/<refname>`` first, then ``packed-refs``. Anything out of the ordinary
(a symbolic ref, a file git would call broken, an unreadable file) raises
``Unsure`` and the caller asks git, so answers stay git's. So do a repository
whose refs are not in the files backend (reftable), a name outside ``refs/``
for a single-ref lookup, and a ``packed-refs`` larger than ``MAX_FILE_BYTES``
(not read at all) or with lines this parser does not take.

``packed-refs`` is parsed once per version of the file: a version is its
device, inode, size, modification and change times. Every rewrite (a new file
renamed into place) changes it; the change time also tells a file rewritten in
place or a repository removed and re-created (an inode number reused) from the
one read before. Repairs and removals drop what is kept for a repository
(``forget``) all the same.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

_OID = re.compile(rb"[0-9a-f]{40}\Z")
# More than a loose ref holding an object id (41 bytes) ever needs.
_LOOSE_MAX = 256
# A repository config larger than this is left to git.
_CONFIG_MAX = 64 * 1024
# (device, inode, size, mtime in ns, ctime in ns) of a file.
_Version = tuple[int, int, int, int, int]
# A packed-refs version, its refs (None: left to git) and the bytes they came from.
_Parsed = tuple[_Version, dict[bytes, bytes] | None, int]
# packed-refs files larger than this are left to git (a 36 MB file of 500k refs
# took seconds to parse, on the event loop); the parsed files kept, in all.
MAX_FILE_BYTES = 1024 * 1024
MAX_BYTES = 8 * 1024 * 1024


class Unsure(Exception):
    """The files say something only git should interpret: ask git."""


def _loose(path: str) -> bytes | None:
    """The object id in a loose ref file; None when there is no such file."""
    try:
        # os.path strings and an unbuffered read: asked on every call, where
        # pathlib's objects cost more than the system calls.
        with open(path, "rb", buffering=0) as f:
            data = f.read(_LOOSE_MAX)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        # No file, or a directory of refs under that name: not a loose ref.
        return None
    except OSError as exc:
        raise Unsure(str(exc)) from exc
    oid = data[:-1] if data.endswith(b"\n") else data
    if not _OID.match(oid):
        # "ref: ..." (symbolic) or content git reports as broken.
        raise Unsure("not a plain loose ref")
    return oid


def parse_packed_refs(data: bytes) -> dict[bytes, bytes]:
    """refname -> object id of a packed-refs file (peeled lines skipped)."""
    refs: dict[bytes, bytes] = {}
    for line in data.split(b"\n"):
        if not line or line.startswith((b"#", b"^")):
            continue
        oid, sep, name = line.partition(b" ")
        if not sep or not _OID.match(oid) or not name:
            raise Unsure("unexpected line in packed-refs")
        refs[name] = oid
    return refs


class PackedRefs:
    """Parsed ``packed-refs`` files, one per repository, re-read when the file changes."""

    def __init__(
        self,
        max_repositories: int = 64,
        max_file_bytes: int = MAX_FILE_BYTES,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.max_repositories = max_repositories
        self.max_file_bytes = max_file_bytes
        # Bytes of packed-refs files kept parsed, all repositories together.
        self.max_bytes = max(max_bytes, max_file_bytes)
        self._files: OrderedDict[str, _Parsed] = OrderedDict()
        self._bytes = 0
        # Whether a repository keeps its refs in files, per version of its config.
        self._backends: OrderedDict[str, tuple[_Version, bool]] = OrderedDict()

    def forget(self, repo: Path | str) -> None:
        """Drop what is kept for a repository removed or replaced."""
        key = str(repo)
        self._drop(key)
        self._backends.pop(key, None)

    def check_files_backend(self, repo: Path | str) -> None:
        """Raises ``Unsure`` unless the repository's refs live in the files backend.

        A reftable repository keeps ``refs/heads`` as a file and its refs in
        ``reftable/``: a missing loose file says nothing there. Judged from
        the ``reftable`` directory (looked for on every call) and ``config``
        (``extensions.refStorage``, read once per version of the file).
        """
        key = str(repo)
        if os.path.lexists(key + "/reftable"):
            raise Unsure("a reftable directory")
        try:
            st = os.stat(key + "/config")
        except OSError as exc:
            raise Unsure(str(exc)) from exc
        version = _version(st)
        cached = self._backends.get(key)
        if cached is None or cached[0] != version:
            cached = (version, _uses_files_backend(key))
            self._backends[key] = cached
            while len(self._backends) > self.max_repositories:
                self._backends.popitem(last=False)
        self._backends.move_to_end(key)
        if not cached[1]:
            raise Unsure("refs not in the files backend")

    def refs(self, repo: Path | str) -> dict[bytes, bytes]:
        """refname -> object id of the repository's packed-refs ({} without one).

        Raises ``Unsure`` for a file larger than ``max_file_bytes`` (not read:
        parsing it would hold the event loop and take memory; git decides) or
        one with lines this parser does not take (SHA-256 ids, say); the verdict
        is kept for that version of the file like a parsed one.
        """
        key = str(repo)
        path = key + "/packed-refs"
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._drop(key)
            return {}
        except OSError as exc:
            raise Unsure(str(exc)) from exc
        cached = self._files.get(key)
        if cached is None or cached[0] != _version(st):
            cached = self._read(key, path, st)
        self._files.move_to_end(key)
        if cached[1] is None:
            raise Unsure("packed-refs left to git")
        return cached[1]

    def _read(self, key: str, path: str, st: os.stat_result) -> _Parsed:
        self._drop(key)
        if st.st_size > self.max_file_bytes:
            parsed: _Parsed = (_version(st), None, 0)
        else:
            try:
                with open(path, "rb") as f:
                    # The version of what is read: the file may be replaced meanwhile.
                    version = _version(os.fstat(f.fileno()))
                    data = f.read(self.max_file_bytes + 1)
            except FileNotFoundError:
                return (_version(st), {}, 0)
            except OSError as exc:
                raise Unsure(str(exc)) from exc
            try:
                if len(data) > self.max_file_bytes:
                    raise Unsure("packed-refs too large")
                parsed = (version, parse_packed_refs(data), len(data))
            except Unsure:
                parsed = (version, None, 0)
        self._files[key] = parsed
        self._bytes += parsed[2]
        while len(self._files) > self.max_repositories or self._bytes > self.max_bytes:
            _, (_, _, size) = self._files.popitem(last=False)
            self._bytes -= size
        return parsed

    def _drop(self, key: str) -> None:
        dropped = self._files.pop(key, None)
        if dropped is not None:
            self._bytes -= dropped[2]

    def resolve(self, repo: Path | str, refname: bytes) -> bytes | None:
        """The object id ``refname`` (well formed) points to; None: no such ref.

        Raises ``Unsure`` when git must decide (see the module docstring), and
        for a name outside ``refs/``: any file of the repository could be read
        as one (``worktrees/x/ORIG_HEAD``), where ``git show-ref --verify``
        knows only refs.
        """
        if not refname.startswith(b"refs/"):
            raise Unsure("not a name under refs/")
        return self.first(repo, (refname,))

    def first(self, repo: Path | str, refnames: Sequence[bytes]) -> bytes | None:
        """``resolve`` of each name in turn, the first that exists.

        packed-refs is looked at again after each loose miss (a stat while it
        is unchanged): a ``git pack-refs`` between two names moves a ref from
        its loose file into a new packed-refs, and a copy read before that
        would miss it and answer a later name git never reaches.
        """
        self.check_files_backend(repo)
        root = str(repo) + "/"
        for refname in refnames:
            oid = _loose(root + os.fsdecode(refname))
            if oid is not None:
                return oid
            oid = self.refs(repo).get(refname)
            if oid is not None:
                return oid
        return None


_REF_STORAGE = re.compile(rb"^\s*refstorage\s*=\s*(\S*)", re.IGNORECASE | re.MULTILINE)


def _uses_files_backend(repo: str) -> bool:
    """Whether ``repo``'s config leaves its refs in the files backend (False also when unsure)."""
    try:
        with open(repo + "/config", "rb") as f:
            config = f.read(_CONFIG_MAX + 1)
    except OSError:
        return False
    if len(config) > _CONFIG_MAX:
        return False
    # Any refStorage setting other than "files" (in any section: a cheap,
    # cautious reading) leaves the answer to git.
    return all(value.lower() == b"files" for value in _REF_STORAGE.findall(config))


def _version(st: os.stat_result) -> _Version:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
