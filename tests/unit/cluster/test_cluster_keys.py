from __future__ import annotations

import pytest

from gitquorum.cluster.keys import Keyspace
from gitquorum.errors import InvalidArgument


def test_keys_live_under_one_cluster_prefix_and_parse_back() -> None:
    keys = Keyspace("prod")
    assert keys.prefix == "/gitquorum/prod/"
    assert keys.proxy("p1") == "/gitquorum/prod/proxies/p1"
    assert keys.leader() == "/gitquorum/prod/election/leader"
    assert keys.repository_id_counter() == "/gitquorum/prod/ids/repository"
    assert keys.repository("default", 42) == "/gitquorum/prod/repositories/default/42"
    assert keys.parse_repository(keys.repository("default", 42)) == ("default", 42)
    assert (
        keys.path("default", "@hashed/ab/cd.git")
        == "/gitquorum/prod/paths/default/@hashed/ab/cd.git"
    )
    assert keys.job("vs", "n1", 7, "j1") == "/gitquorum/prod/jobs/vs/n1/7/j1"
    assert keys.lock("vs", "n1", 7) == "/gitquorum/prod/locks/vs/n1/7"
    assert keys.parse_lock(keys.lock("vs", "n1", 7)) == ("vs", "n1", 7)


@pytest.mark.parametrize("bad", ["", "a/b", ".", ".."])
def test_names_with_slashes_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        Keyspace("c").proxy(bad)


def test_verification_keys_are_per_replica_and_parse_back() -> None:
    keys = Keyspace("prod")
    assert keys.verifications() == "/gitquorum/prod/verified/"
    assert keys.verifications("vs") == "/gitquorum/prod/verified/vs/"
    assert keys.verifications("vs", 7) == "/gitquorum/prod/verified/vs/7/"
    assert keys.verification("vs", 7, "n1") == "/gitquorum/prod/verified/vs/7/n1"
    assert keys.parse_verification(keys.verification("vs", 7, "n1")) == ("vs", 7, "n1")
    with pytest.raises(InvalidArgument):
        keys.verification("vs", 7, "a/b")
