"""A proxy whose start fails half-way leaves nothing behind.

The proxy runs in this process against a real etcd, with one of its ports
already taken by a socket the test holds. Its start must fail with a clear
error and close what it had opened: no asyncio task, no etcd lease and no
key (membership, leader) may outlive it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitquorum.config import proxy_config_from_dict
from gitquorum.lifecycle import ListenError
from gitquorum.proxy.server import ProxyServer
from tests.harness.etcd import EtcdCluster, free_ports

GRPC_SETTLE = 5.0


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(1, tmp_path_factory.mktemp("lifecycle-etcd")).start()
    yield cluster
    cluster.close()


@pytest.fixture
def taken() -> Iterator[socket.socket]:
    """A listening socket on a free port: the address the proxy cannot have."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield holder
    holder.close()


def _post(etcd: EtcdCluster, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{etcd.members[0].client_url}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def leases(etcd: EtcdCluster) -> list[str]:
    return [lease["ID"] for lease in _post(etcd, "/v3/lease/leases", {}).get("leases", [])]


def keys(etcd: EtcdCluster) -> list[str]:
    everything = base64.b64encode(b"\0").decode()
    found = _post(etcd, "/v3/kv/range", {"key": everything, "range_end": everything})
    return [base64.b64decode(kv["key"]).decode() for kv in found.get("kvs", [])]


def config_data(etcd: EtcdCluster, listen: str, metrics: str) -> dict[str, object]:
    # Nodes nobody serves: health checks fail fast, which start() tolerates.
    nodes = free_ports(2)
    return {
        "listen": listen,
        "metrics_listen": metrics,
        "name": "lifecycle",
        "etcd": {"endpoints": etcd.endpoints},
        "virtual_storages": [
            {
                "name": "default",
                "nodes": [
                    {"storage": f"node{i}", "address": f"127.0.0.1:{port}"}
                    for i, port in enumerate(nodes)
                ],
            }
        ],
        "health": {"interval": "250ms", "timeout": "250ms"},
        "election": {"ttl": "3s"},
    }


def _ours(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` runs gitquorum code (grpc's own call tasks are compiled code)."""
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and f"{os.sep}gitquorum{os.sep}" in code.co_filename


def _started_since(before: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t not in before and not t.done()]


async def _leftover_tasks(before: set[asyncio.Task[Any]]) -> list[str]:
    """Tasks started since ``before`` that outlive a start() that raised.

    gitquorum's own tasks (watches, lease keepers, checker, election, workers)
    must be gone at once; grpc's internal call tasks end as their channel's
    close completes, so they get a short deadline.
    """
    await asyncio.sleep(0)  # let tasks that were just told to finish run their last step
    ours = [f"{t.get_name()} {t.get_coro()!r}" for t in _started_since(before) if _ours(t)]
    if ours:
        return ours
    if left := _started_since(before):
        await asyncio.wait(left, timeout=GRPC_SETTLE)
    return [f"{t.get_name()} {t.get_coro()!r}" for t in _started_since(before)]


@pytest.mark.parametrize("port", ["listen", "metrics_listen"])
async def test_a_start_on_a_taken_port_leaves_nothing_behind(
    etcd: EtcdCluster, taken: socket.socket, port: str
) -> None:
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    free = "127.0.0.1:0"
    data = config_data(
        etcd,
        listen=address if port == "listen" else free,
        metrics=address if port == "metrics_listen" else free,
    )
    assert leases(etcd) == [] and keys(etcd) == []
    before = asyncio.all_tasks()
    proxy = ProxyServer(proxy_config_from_dict(data), secrets=((), ()))
    with pytest.raises(ListenError, match=re.escape(f"cannot listen on {address}")):
        await proxy.start()
    left = await _leftover_tasks(before)
    assert not left, f"tasks outlived the failed start: {left}"
    assert leases(etcd) == [], "a lease outlived the failed start"
    assert keys(etcd) == [], "a key (membership, leader) outlived the failed start"


def test_the_cli_reports_a_taken_port_and_exits_1(
    etcd: EtcdCluster, taken: socket.socket, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(config_data(etcd, listen=address, metrics="127.0.0.1:0")))
    done = subprocess.run(
        [sys.executable, "-m", "gitquorum.cli.main", "proxy", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 1, done.stderr
    assert f"proxy: cannot listen on {address}" in done.stderr
    assert "Traceback" not in done.stderr
    assert leases(etcd) == [] and keys(etcd) == []
