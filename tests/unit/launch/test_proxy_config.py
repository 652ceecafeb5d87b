"""The one proxy-configuration builder, as gitquorum up and the test harness call it."""

from __future__ import annotations

from typing import Any

import pytest

from gitquorum.launch.proxy_config import proxy_config
from tests.harness.cluster import HARNESS_PROXY_SETTINGS, Cluster

NODES = [("node1", "127.0.0.1:1001"), ("node2", "127.0.0.1:1002")]


def build(**kwargs: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "proxy1",
        "listen": "127.0.0.1:2000",
        "etcd_endpoints": ["127.0.0.1:3000"],
        "nodes": NODES,
        "replication_factor": 2,
    }
    return proxy_config(**{**base, **kwargs})


UP_DEFAULTS: dict[str, Any] = {
    "name": "proxy1",
    "listen": "127.0.0.1:2000",
    "etcd": {"endpoints": ["127.0.0.1:3000"]},
    "virtual_storages": [
        {
            "name": "default",
            "default_replication_factor": 2,
            "nodes": [
                {"storage": "node1", "address": "127.0.0.1:1001"},
                {"storage": "node2", "address": "127.0.0.1:1002"},
            ],
        }
    ],
    "health": {"interval": "1s", "timeout": "1s"},
    "election": {"ttl": "5s"},
    "replication": {"reconcile_interval": "5s"},
    "graceful_timeout": "5s",
    "log_level": "info",
    # One process per local proxy, whatever the default of a configuration file.
    "workers": 1,
}


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param({}, UP_DEFAULTS, id="gitquorum-up-defaults"),
        pytest.param(
            {"metrics_listen": "127.0.0.1:2001"},
            {**UP_DEFAULTS, "metrics_listen": "127.0.0.1:2001"},
            id="metrics-listen",
        ),
        pytest.param(
            {"token_file": "/t/client", "node_token_file": "/t/node"},
            {**UP_DEFAULTS, "auth": {"token_file": "/t/client", "node_token_file": "/t/node"}},
            id="auth",
        ),
        pytest.param(
            # An override replaces the whole top-level value, not one nested key.
            {"overrides": {"health": {"interval": "250ms"}, "vote_timeout": "5s"}},
            {**UP_DEFAULTS, "health": {"interval": "250ms"}, "vote_timeout": "5s"},
            id="overrides-replace-top-level-keys",
        ),
        pytest.param(
            {"virtual_storage": "vs", "nodes": []},
            {
                **UP_DEFAULTS,
                "virtual_storages": [{"name": "vs", "default_replication_factor": 2, "nodes": []}],
            },
            id="virtual-storage-name",
        ),
    ],
)
def test_builder(kwargs: dict[str, Any], expected: dict[str, Any]) -> None:
    assert build(**kwargs) == expected


class _Etcd:
    endpoints = ["127.0.0.1:3000"]


class _Node:
    def __init__(self, name: str, address: str) -> None:
        self.name, self.address = name, address


@pytest.mark.parametrize(
    ("proxy_settings", "expected_changes"),
    [
        pytest.param({}, {}, id="harness-defaults"),
        pytest.param(
            {"replication": {"verify_interval": "1s"}},
            {"replication": {"verify_interval": "1s"}},
            id="test-settings-win",
        ),
    ],
)
def test_harness_overrides_the_up_defaults(
    tmp_path: Any, proxy_settings: dict[str, Any], expected_changes: dict[str, Any]
) -> None:
    cluster = Cluster(tmp_path, replication_factor=2, proxy_settings=proxy_settings)
    cluster.etcd = _Etcd()  # type: ignore[assignment]
    cluster.nodes = [_Node(n, a) for n, a in NODES]  # type: ignore[misc]
    config = cluster.proxy_config("proxy1", 2000)
    # What the harness always ran with: fast health checks, short TTLs, a 10 s drain.
    expected = {**UP_DEFAULTS, **HARNESS_PROXY_SETTINGS, **expected_changes}
    assert config == expected
    assert config["health"] == expected_changes.get(
        "health", {"interval": "250ms", "timeout": "500ms"}
    )
    assert "metrics_listen" not in config
