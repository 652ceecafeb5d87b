"""The replication claim a proxy gives the target node of ``ReplicateRepository``.

``x-gitquorum-replication-claim`` carries the etcd revision at which the
replication job's claim was taken (``ClaimedJob.claim_revision``). Claims of
one replica are taken one after another, so a later claim has a larger
revision: the node uses it to refuse a copy from a worker whose claim was
taken over (``storage.replication_fence``).
"""

from __future__ import annotations

from collections.abc import Sequence

from gitquorum.errors import InvalidArgument

CLAIM_KEY = "x-gitquorum-replication-claim"


def claim_metadata(claim_revision: int) -> tuple[str, str]:
    return (CLAIM_KEY, str(claim_revision))


def claim_from_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> int | None:
    """The claim revision, or None when the caller sent none (a direct call)."""
    raw = next((v for k, v in metadata or () if k == CLAIM_KEY), None)
    if raw is None:
        return None
    text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    if not text.isdigit():
        raise InvalidArgument(f"{CLAIM_KEY} must be a non-negative integer, got {text[:32]!r}")
    return int(text)
