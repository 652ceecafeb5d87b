"""Our proto/ must agree on the wire with descriptors compiled from Gitaly's own protos.

The reference descriptors come from the ``hgitaly`` package (stubs compiled from
current Gitaly protos, no SSH/HTTP services). For every message both sides
define, every field we declare must have the same number, wire type, label and
message/enum type; every method both define must have the same shape.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DUMP = Path(__file__).resolve().parents[1] / "compat" / "dump_descriptors.py"


def _dump(package: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(DUMP), package], capture_output=True, check=True, timeout=60
    )
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def shapes() -> tuple[dict, dict]:
    pytest.importorskip("hgitaly.stub", reason="reference stubs are installed by .ci/run")
    return _dump("gitquorum.gitaly"), _dump("hgitaly.stub")


def test_every_shared_message_matches(shapes: tuple[dict, dict]) -> None:
    ours, ref = shapes
    shared = set(ours["messages"]) & set(ref["messages"])
    # Sanity: the comparison really covers the bulk of what we declare.
    assert len(shared) >= 60, sorted(set(ours["messages"]) - shared)
    mismatches = []
    for name in sorted(shared):
        for field, spec in ours["messages"][name].items():
            theirs = ref["messages"][name].get(field)
            if theirs != spec:
                mismatches.append((name, field, spec, theirs))
    assert mismatches == []


def test_every_shared_method_has_same_shape(shapes: tuple[dict, dict]) -> None:
    ours, ref = shapes
    shared = set(ours["methods"]) & set(ref["methods"])
    assert len(shared) >= 30
    assert {m: ours["methods"][m] for m in shared} == {m: ref["methods"][m] for m in shared}


def test_messages_missing_from_reference_are_known(shapes: tuple[dict, dict]) -> None:
    ours, ref = shapes
    # SSH/HTTP and proxy-only messages are not in the reference stubs; the rest must be.
    only_ours = {
        n
        for n in set(ours["messages"]) - set(ref["messages"])
        if not n.startswith(
            (
                "gitaly.SSH",
                "gitaly.InfoRefs",
                "gitaly.PostUploadPack",
                "gitaly.PostReceivePack",
                "gitaly.VoteTransaction",
                "gitaly.StopTransaction",
                "gitaly.Dataloss",
                "gitaly.RepositoryReplicas",
                "gitaly.SetAuthoritativeStorage",
                "gitaly.SetReplicationFactor",
                "gitaly.GetRepositoryMetadata",
                "gitaly.MarkUnverified",
            )
        )
    }
    assert only_ours == set()
