"""The replica checksum against an independent reading of Gitaly's rule."""

from __future__ import annotations

import hashlib
import re
import subprocess
from functools import reduce
from pathlib import Path

from gitquorum.storage.repo_checksum import ZERO_CHECKSUM, checksum_of_show_ref
from tests.harness import gitrepo

_PATTERN = re.compile(r"HEAD|(refs/(heads|tags|keep-around|merge-requests|environments|notes)/)")


def reference(output: str) -> str:
    """Gitaly's algorithm spelled out differently: big-int XOR, Go's Bytes() hex."""
    digests = [
        int.from_bytes(hashlib.sha1(line.encode()).digest(), "big")
        for line in output.split("\n")
        if line and _PATTERN.search(line)
    ]
    value = reduce(lambda a, b: a ^ b, digests, 0)
    if value == 0:
        return ZERO_CHECKSUM
    raw = value.to_bytes(20, "big").lstrip(b"\x00")
    return raw.hex()


def test_matches_reference_on_a_real_repository(tmp_path: Path) -> None:
    repo = gitrepo.make_repo(tmp_path / "repo", branches=("feature", "topic"))
    gitrepo.git("update-ref", "refs/keep-around/abc", "HEAD", cwd=repo)
    gitrepo.git("update-ref", "refs/remotes/origin/main", "HEAD~1", cwd=repo)
    gitrepo.git("update-ref", "refs/pipelines/1", "HEAD~2", cwd=repo)
    output = subprocess.run(
        ["git", "show-ref", "--head"], cwd=repo, capture_output=True, check=True
    ).stdout
    assert checksum_of_show_ref(output) == reference(output.decode())
    # Uncounted namespaces leave it unchanged.
    kept = b"\n".join(
        line
        for line in output.split(b"\n")
        if b"refs/remotes/" not in line and b"pipelines" not in line
    )
    assert checksum_of_show_ref(kept) == checksum_of_show_ref(output)


def test_counted_lines() -> None:
    oid = "a" * 40
    lines = [
        f"{oid} HEAD",
        f"{oid} refs/heads/main",
        f"{oid} refs/tags/v1",
        f"{oid} refs/merge-requests/1/head",
        f"{oid} refs/environments/prod",
        f"{oid} refs/notes/commits",
        f"{oid} refs/keep-around/{oid}",
        # Unanchored: HEAD anywhere in the line counts.
        f"{oid} refs/remotes/origin/HEAD",
    ]
    for line in lines:
        digest = hashlib.sha1(line.encode()).digest()
        assert checksum_of_show_ref(line.encode() + b"\n") == digest.lstrip(b"\x00").hex()
    for line in (f"{oid} refs/remotes/origin/main", f"{oid} refs/pipelines/1", ""):
        assert checksum_of_show_ref(line.encode()) == ZERO_CHECKSUM


def test_xor_is_order_independent_and_cancels() -> None:
    a = b"1" * 40 + b" refs/heads/a"
    b = b"2" * 40 + b" refs/heads/b"
    assert checksum_of_show_ref(a + b"\n" + b + b"\n") == checksum_of_show_ref(b + b"\n" + a)
    assert checksum_of_show_ref(a + b"\n" + a + b"\n") == ZERO_CHECKSUM


def test_leading_zero_bytes_are_dropped() -> None:
    line = next(
        candidate
        for candidate in (f"{i:040x} refs/heads/main".encode() for i in range(100_000))
        if hashlib.sha1(candidate).digest()[0] == 0
    )
    checksum = checksum_of_show_ref(line)
    assert checksum == hashlib.sha1(line).digest().lstrip(b"\x00").hex()
    assert len(checksum) < 40 and len(checksum) % 2 == 0


def test_empty_output() -> None:
    assert checksum_of_show_ref(b"") == ZERO_CHECKSUM
