"""Cluster-wide settings: what each proxy publishes, and the rule that compares them."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gitquorum.cli.admin_view import _member
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.membership import ProxyMembership, decode_member, encode_member
from gitquorum.cluster.memory_store import MemoryStore
from gitquorum.cluster.settings import SettingsAgreement, settings_agreement, settings_hash
from gitquorum.config import proxy_config_from_dict
from gitquorum.config_settings import cluster_settings
from tests.unit.test_config import GOOD_PROXY


def settings_of(**changes: Any) -> dict[str, str]:
    data = copy.deepcopy(GOOD_PROXY)
    for dotted, value in changes.items():
        *sections, key = dotted.split("__")
        target = data
        for section in sections:
            target = target.setdefault(section, {})
        target[key] = value
    return cluster_settings(proxy_config_from_dict(data))


BASE = settings_of()


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "proxy-b"},
        {"listen": "0.0.0.0:3305"},
        {"advertise": "10.0.0.2:2305"},
        {"metrics_listen": "0.0.0.0:9999"},
        {"log_level": "debug"},
        {"graceful_timeout": "1m"},
        {"replication__workers": 8},
        {"limits__mutator_concurrency": 4},
        {"etcd__endpoints": ["10.0.0.9:2379", "127.0.0.1:2379"]},
        {"auth__token_file": "/etc/gitquorum/other-path"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_per_proxy_settings_do_not_count(changes: dict[str, Any]) -> None:
    if "auth__token_file" in changes:
        # The path of the secret is per host; whether there is one is not.
        assert settings_of(auth__token_file="/a") == settings_of(**changes)
    else:
        assert settings_of(**changes) == BASE


@pytest.mark.parametrize(
    ("changes", "section"),
    [
        ({"health__interval": "2s"}, "health"),
        ({"health__timeout": "3s"}, "health"),
        ({"election__ttl": "9s"}, "election"),
        ({"vote_timeout": "7s"}, "timeouts"),
        ({"write_timeout": "7s"}, "timeouts"),
        ({"stale_read_limit": "9s"}, "timeouts"),
        ({"replication__attempts": 9}, "replication"),
        ({"replication__reconcile_interval": "1m"}, "replication"),
        ({"replication__verify_interval": "1h"}, "replication"),
        ({"etcd__cluster": "other"}, "etcd.cluster"),
        ({"auth__token_file": "/etc/gitquorum/token"}, "security"),
        ({"node_tls": {}}, "security"),
        (
            {
                "virtual_storages": [
                    {**GOOD_PROXY["virtual_storages"][0], "default_replication_factor": 2}
                ]
            },
            "virtual_storages",
        ),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else v,
)
def test_cluster_wide_settings_differ_in_their_section(
    changes: dict[str, Any], section: str
) -> None:
    other = settings_of(**changes)
    assert {name for name in BASE if BASE[name] != other[name]} == {section}


def test_node_order_does_not_count() -> None:
    vs = copy.deepcopy(GOOD_PROXY["virtual_storages"][0])
    vs["nodes"].reverse()
    assert settings_of(virtual_storages=[vs]) == BASE


A = {"health": "h1", "timeouts": "t1"}
B = {"health": "h2", "timeouts": "t1"}


@pytest.mark.parametrize(
    ("published", "agree", "differing", "unknown", "groups"),
    [
        ({}, True, (), (), ()),
        ({"p1": A}, True, (), (), (("p1",),)),
        ({"p1": A, "p2": dict(A)}, True, (), (), (("p1", "p2"),)),
        ({"p1": A, "p2": B}, False, ("health",), (), (("p1",), ("p2",))),
        ({"p1": A, "p2": A, "p3": B}, False, ("health",), (), (("p1", "p2"), ("p3",))),
        ({"p1": A, "p2": {}}, True, (), ("p2",), (("p1",),)),
        ({"p1": {}, "p2": {}}, True, (), ("p1", "p2"), ()),
        # A section only one side has (a newer version): a difference too.
        ({"p1": A, "p2": {**A, "new": "x"}}, False, ("new",), (), (("p1",), ("p2",))),
    ],
)
def test_settings_agreement(
    published: dict[str, dict[str, str]],
    agree: bool,
    differing: tuple[str, ...],
    unknown: tuple[str, ...],
    groups: tuple[tuple[str, ...], ...],
) -> None:
    result = settings_agreement(published)
    assert isinstance(result, SettingsAgreement)
    assert result.agree is agree
    assert result.differing == differing
    assert result.unknown == unknown
    assert tuple(names for _h, names in result.groups) == groups
    for h, names in result.groups:
        assert h == settings_hash(published[names[0]])


def test_membership_record_carries_the_settings() -> None:
    value = encode_member("127.0.0.1:1", 1.0, {"default": {"n1": True}}, BASE)
    assert json.loads(value)["settings"] == BASE
    # The health view reads what it always read; the admin view reads the settings.
    assert decode_member(value) == ("127.0.0.1:1", {"default": {"n1": True}})
    member = _member("p1", value)
    assert member is not None and member.settings == BASE
    old = encode_member("127.0.0.1:1", 1.0, {})
    assert "settings" not in json.loads(old)
    member = _member("p1", old)
    assert member is not None and member.settings == {}


async def test_membership_publishes_settings_with_every_health_update() -> None:
    store, keys = MemoryStore(), Keyspace("test")
    membership = ProxyMembership(store, keys, "p1", address="a:1", settings=BASE)
    await membership.start({})
    try:
        await membership.publish_health({"default": {"n1": True}})
        kv = await store.get(keys.proxy("p1"))
        assert kv is not None and json.loads(kv.value)["settings"] == BASE
    finally:
        await membership.close()
