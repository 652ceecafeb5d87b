"""A storage node of two worker processes on one address (``--workers 2``).

The kernel spreads connections over the workers; one scrape of the node's
metrics address shows both; no other process binds its port; SIGTERM drains
both. The whole node suite runs against pooled nodes with
GITQUORUM_TEST_NODE_WORKERS=2 (tests/harness/node.py).
"""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gitquorum.gitaly import repository_pb2, repository_pb2_grpc, shared_pb2
from gitquorum.launch.process import wait_for
from tests.harness.node import NodeProcess
from tests.harness.pooled import alive, workers_of
from tests.integration.proxy import helpers

# Until both workers served: each call on a connection of its own, which the
# kernel gives either worker; all on one after 40 has odds 2**-39.
MAX_CONNECTIONS = 40


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    base = tmp_path_factory.mktemp("pooled-node")
    node = NodeProcess("pooled", base / "storage", base / "logs", extra_args=["--workers", "2"])
    node.start()
    try:
        yield node
    finally:
        node.terminate()


def _exists_calls(port: int) -> float:
    text = helpers.scrape(port)
    method = "/gitaly.RepositoryService/RepositoryExists"
    return helpers.sample(text, "gitquorum_rpc_requests_total", method=method)


def test_connections_reach_both_workers_and_one_scrape_counts_them(pooled: NodeProcess) -> None:
    workers = workers_of(pooled)
    assert {w.address for w in workers} == {pooled.address}
    relative_path = f"workers/{uuid.uuid4().hex}.git"
    repository = shared_pb2.Repository(storage_name=pooled.name, relative_path=relative_path)
    with grpc.insecure_channel(pooled.address) as channel:
        repository_pb2_grpc.RepositoryServiceStub(channel).CreateRepository(
            repository_pb2.CreateRepositoryRequest(repository=repository), timeout=30
        )
    for _ in range(MAX_CONNECTIONS):
        with grpc.insecure_channel(
            pooled.address, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as channel:
            # The repository one worker created, seen by whichever serves this call.
            answer = repository_pb2_grpc.RepositoryServiceStub(channel).RepositoryExists(
                repository_pb2.RepositoryExistsRequest(repository=repository), timeout=30
            )
            assert answer.exists
        if all(_exists_calls(w.metrics_port) > 0 for w in workers):
            break
    else:
        pytest.fail(f"{MAX_CONNECTIONS} connections, all taken by one worker")
    each = [_exists_calls(w.metrics_port) for w in workers]
    assert _exists_calls(pooled.metrics_port) == sum(each), each
    whole = helpers.scrape(pooled.metrics_port)
    assert helpers.sample(whole, "gitquorum_worker_up") == 2.0


def test_no_other_process_binds_the_node_port(pooled: NodeProcess, tmp_path: Path) -> None:
    host, _, port = pooled.address.rpartition(":")
    with socket.socket() as intruder, pytest.raises(OSError) as refused:
        intruder.bind((host, int(port)))
    assert refused.value.errno == errno.EADDRINUSE
    for workers in ("1", "2"):
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "gitquorum.cli.main",
                "node",
                "--listen",
                pooled.address,
                "--storage",
                f"intruder={tmp_path / 'storage'}",
                "--workers",
                workers,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, done.stderr
        assert f"node: cannot listen on {pooled.address}" in done.stderr


def test_sigterm_drains_every_node_worker(tmp_path: Path) -> None:
    node = NodeProcess(
        "drained", tmp_path / "storage", tmp_path / "logs", extra_args=["--workers", "2"]
    ).start()
    try:
        workers = workers_of(node)
        assert node.proc is not None
        node.proc.terminate()
        assert node.proc.wait(30) == 0, node.log_tail()
        for worker in workers:
            wait_for(lambda w=worker: not alive(w.pid), 10, 0.05, "the worker to exit")
        log = node.log_tail(100)
        assert (
            '"msg": "workers stopped", "exits": ["exited with status 0", "exited with status 0"]'
            in log
        ), log
    finally:
        node.terminate(10)
