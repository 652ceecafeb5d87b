"""A gateway given several backends spreads its calls over them (round robin)."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request
from pathlib import Path

from gitquorum.gateway.http import GatewayConfig, GatewayServer
from tests.harness.node import NodeProcess

INFO_REFS = "gitaly.SmartHTTPService/InfoRefsUploadPack"


def info_refs_calls(node: NodeProcess) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    pattern = re.compile(r"^gitquorum_rpc_requests_total\{([^}]*)\} (\S+)$", re.M)
    return sum(float(v) for labels, v in pattern.findall(text) if INFO_REFS in labels)


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_calls_are_spread_over_every_backend(tmp_path: Path) -> None:
    nodes = [
        NodeProcess(
            "default",
            tmp_path / f"storage{i}",
            tmp_path / f"n{i}",
            extra_args=["--metrics-listen", "127.0.0.1:0"],
        ).start()
        for i in range(2)
    ]
    try:
        target = "ipv4:" + ",".join(n.address for n in nodes)
        gateway = GatewayServer(
            GatewayConfig(proxy=target, storage="default", listen="127.0.0.1:0")
        )
        await gateway.start()
        try:
            url = f"http://127.0.0.1:{gateway.port}/missing.git/info/refs?service=git-upload-pack"
            for _ in range(12):
                # No such repository: 404, after asking one backend.
                assert await asyncio.to_thread(status, url) == 404
        finally:
            await gateway.close()
        calls = [info_refs_calls(n) for n in nodes]
        assert sum(calls) == 12 and all(c >= 3 for c in calls), calls
    finally:
        for node in nodes:
            node.terminate()
