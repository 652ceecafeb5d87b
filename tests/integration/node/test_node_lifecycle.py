"""A node whose start fails half-way closes what it opened.

The node runs in this process with one of its ports already taken by a socket
the test holds: start() must fail with a clear error, and the vote listener,
its hooks directory, the gRPC port and every task it started must be gone.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gitquorum.config import node_config_from_dict
from gitquorum.lifecycle import ListenError
from gitquorum.storage.server import NodeServer


@pytest.fixture
def taken() -> Iterator[socket.socket]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    yield holder
    holder.close()


def _running_since(before: set[asyncio.Task[Any]]) -> list[str]:
    return sorted(t.get_name() for t in asyncio.all_tasks() if t not in before and not t.done())


@pytest.mark.parametrize("port", ["listen", "metrics_listen"])
async def test_a_start_on_a_taken_port_closes_what_it_opened(
    taken: socket.socket, port: str, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    config = node_config_from_dict(
        {
            "listen": address if port == "listen" else "127.0.0.1:0",
            "metrics_listen": address if port == "metrics_listen" else "127.0.0.1:0",
            "storages": [{"name": "default", "path": str(tmp_path / "storage")}],
        }
    )
    before = asyncio.all_tasks()
    node = NodeServer(config, CollectorRegistry(), secrets=())
    with pytest.raises(ListenError, match=re.escape(f"cannot listen on {address}")):
        await node.start()
    await asyncio.sleep(0)  # let tasks that were just told to finish run their last step
    assert _running_since(before) == []
    assert node.context is not None
    voting = node.context.voting
    assert voting._server is not None and not voting._server.is_serving()
    assert not voting._hooks_dir.exists(), "the hooks directory outlived the failed start"
    if node.port:
        # The gRPC port was bound (the metrics port failed): it is free again.
        with socket.socket() as again:
            again.bind(("127.0.0.1", node.port))
