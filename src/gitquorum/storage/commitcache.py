"""Answers for revisions that name a ref, without asking cat-file each time.

A FindCommit of ``main`` costs a round trip to the repository's cat-file
process, a good part of the call (TreeEntry's tree lookup and RefExists's
object check likewise). Here the ref is resolved from the files the
way git's revision parser resolves a plain name (``refdwim``: the name itself,
then under ``refs/``, ``refs/tags/``, ``refs/heads/``, ``refs/remotes/``,
``refs/remotes/<name>/HEAD``; the first that exists wins, as with
``core.warnAmbiguousRefs=false``), and the answer for the object it points to
is kept: an object id always names the same content, so only the ref is read
again on every call, and a ref that moves gives the new commit at once.

Only what git would read the same way is answered here: a plain name (no
``@``, ``^``, ``~``, ``{``, ``:`` and the like, no abbreviated object id
standing alone), a ref that is a plain object id in its file (``Unsure``
otherwise), a repository without quarantine directories. Everything else goes
to cat-file as before. Answers are kept for objects reached through a ref, which
git never prunes; an object id given as the revision is always asked.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

from gitquorum.storage.refread import PackedRefs, Unsure
from gitquorum.storage.refs import valid_refname

# git's ref_rev_parse_rules, in order.
DWIM_RULES = (
    b"%s",
    b"refs/%s",
    b"refs/tags/%s",
    b"refs/heads/%s",
    b"refs/remotes/%s",
    b"refs/remotes/%s/HEAD",
)
# Names git's revision parser takes as a ref name and nothing else.
_PLAIN = re.compile(rb"[A-Za-z0-9_][A-Za-z0-9_./-]*\Z")
# (An abbreviated id matches no ref: cat-file decides, as git tries refs first.)
_HEX = re.compile(rb"[0-9a-fA-F]+\Z")


def dwim(packed: PackedRefs, repo: Path, revision: bytes) -> bytes | None:
    """The object id a plain revision names through a ref; None: cat-file must say.

    Raises nothing: anything unusual (``Unsure``) is None too.
    """
    if not _PLAIN.match(revision) or not valid_refname(b"refs/heads/" + revision):
        return None
    try:
        return packed.first(repo, [rule % revision for rule in DWIM_RULES])
    except Unsure:
        return None


class ReachableAnswers:
    """Answers about objects reached through a ref, bounded, most recently used kept.

    Keys start with what the answer is and the repository, then the object id:
    ``("commit", repo, oid, trailers)`` a FindCommitResponse, ``("exists",
    repo, oid)`` True once cat-file found the object (RefExists), ``("entry",
    repo, oid, path)`` the tree entry at ``path`` (TreeEntry), ``("blob", repo,
    oid)`` a small blob's header and content (TreeEntry, at most
    ``commit_service.KEPT_BLOB_SIZE`` bytes: with the bound on entries, 16 MiB
    at most). An object id
    names the same content forever, and an object a ref points to is never
    pruned: only the ref has to be read again.
    """

    def __init__(self, packed: PackedRefs, max_entries: int = 4096) -> None:
        self.packed = packed
        self.max_entries = max_entries
        self._answers: OrderedDict[tuple[object, ...], Any] = OrderedDict()

    def target(self, repo: Path, revision: bytes) -> bytes | None:
        """The object a revision names through a ref (None: ask cat-file)."""
        if len(revision) == 40 and _HEX.match(revision):
            # A whole object id is taken as one before any ref of that name.
            return None
        return dwim(self.packed, repo, revision)

    def get(self, key: tuple[object, ...]) -> Any:
        answer = self._answers.get(key)
        if answer is not None:
            self._answers.move_to_end(key)
        return answer

    def forget(self, repo: Path) -> None:
        """Drop the answers of a repository removed or replaced (a repair may
        put a different repository at the same path)."""
        where = str(repo)
        for key in [k for k in self._answers if str(k[1]) == where]:
            del self._answers[key]

    def put(self, key: tuple[object, ...], answer: Any) -> None:
        self._answers[key] = answer
        self._answers.move_to_end(key)
        while len(self._answers) > self.max_entries:
            self._answers.popitem(last=False)
