"""CalculateChecksum: an order-independent digest of a repository's refs.

Replicas compare these to decide whether they agree, so the result must match
Gitaly's bit for bit: each ``git show-ref --head`` line that the unanchored
pattern below finds is SHA-1'd without its LF, the digests are XOR-ed as big
integers, and the result is printed as hex of the integer's minimal
big-endian bytes (leading zero bytes dropped). No matching line at all gives
forty zeros.
"""

from __future__ import annotations

import hashlib
import re

from gitquorum.errors import DataLoss, Internal
from gitquorum.storage import git
from gitquorum.storage.locator import RepoPath, is_repository

ZERO_CHECKSUM = "0" * 40
_COUNTED = re.compile(rb"HEAD|(refs/(heads|tags|keep-around|merge-requests|environments|notes)/)")


def checksum_of_show_ref(output: bytes) -> str:
    """The checksum of ``git show-ref --head`` output."""
    value = 0
    for line in output.split(b"\n"):
        if line and _COUNTED.search(line):
            value ^= int.from_bytes(hashlib.sha1(line).digest(), "big")
    if value == 0:
        return ZERO_CHECKSUM
    return value.to_bytes((value.bit_length() + 7) // 8, "big").hex()


async def calculate_checksum(repo: RepoPath) -> str:
    """Checksum of a located repository: DataLoss when git does not accept it."""
    if not is_repository(repo.path):
        raise DataLoss("not a git repository")
    result = await git.run(["show-ref", "--head"], git_dir=repo.path, env=repo.git_env())
    if result.ok:
        return checksum_of_show_ref(result.stdout)
    # show-ref exits 1 with no output when there is no ref at all; tell that
    # apart from a directory git refuses to treat as a repository.
    probe = await git.run(["rev-parse", "--git-dir"], git_dir=repo.path, env=repo.git_env())
    if not probe.ok:
        raise DataLoss("not a git repository")
    if result.returncode == 1 and not result.stdout:
        return ZERO_CHECKSUM
    raise Internal(f"show-ref failed: {result.stderr.decode(errors='replace').strip()}")
