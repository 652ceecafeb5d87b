"""The checker reads a record's versions between two samples back from a
real etcd's history (open item 15: a failed read is judged by every version
of the record around it, not by the samples alone)."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gitquorum.cluster.repositories import RepositoryRecord, encode_record
from tests.chaos import nemesis as chaos_nemesis
from tests.faults import checker
from tests.faults.context import read_records_at, record_versions
from tests.harness.cluster import VIRTUAL_STORAGE
from tests.harness.etcd import EtcdCluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Any]:
    etcd = EtcdCluster(1, tmp_path / "etcd").start()
    yield SimpleNamespace(etcd=etcd)
    etcd.close()


def _record(generation: int, **replicas: int) -> RepositoryRecord:
    return RepositoryRecord(
        7, VIRTUAL_STORAGE, "a.git", "n3", tuple(sorted(replicas)), generation,
        tuple(sorted(replicas.items())),
    )  # fmt: skip


def _put(cluster: Any, record: RepositoryRecord) -> None:
    key = f"{chaos_nemesis.PREFIX}repositories/{VIRTUAL_STORAGE}/{record.repository_id}"
    body = {
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(encode_record(record)).decode(),
    }
    member = cluster.etcd.members[0]
    request = urllib.request.Request(
        f"{member.client_url}/v3/kv/put", data=json.dumps(body).encode(), method="POST"
    )
    with member._open(request, 5.0) as response:
        assert "header" in json.loads(response.read())


def test_the_versions_between_two_samples_are_read_back(cluster: Any) -> None:
    _put(cluster, _record(5, n1=5, n2=5, n3=5))
    records, before = read_records_at(cluster)
    assert set(checker.up_to_date_replicas(records["a.git"])) == {"n1", "n2", "n3"}
    _put(cluster, _record(6, n1=5, n2=5, n3=6))  # n3 alone: no sample shows it
    _put(cluster, _record(6, n1=5, n2=6, n3=6))
    records, after = read_records_at(cluster)
    _put(cluster, _record(7, n1=5, n2=7, n3=7))  # after the later sample

    versions = record_versions(cluster, records["a.git"], before, after)
    assert [r.generation for _, r in versions] == [6, 6]
    assert [mod for mod, _ in versions] == sorted((mod for mod, _ in versions), reverse=True)
    assert before < versions[-1][0] and versions[0][0] == after
    between = checker.transients("a.git", [1.0, 3.0], [before, after], versions)
    assert [nodes for _, _, nodes in between] == [frozenset({"n2", "n3"}), frozenset({"n3"})]
    assert {(lo, hi) for lo, hi, _ in between} == {(1.0, 3.0)}
