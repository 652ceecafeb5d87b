"""A proxied call's log lines on the proxy and on the node share one correlation id."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc

from gitquorum.gitaly import commit_pb2, commit_pb2_grpc
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.node import wait_for
from tests.integration.proxy import helpers
from tests.integration.proxy.helpers import repository

FIND_COMMIT = "/gitaly.CommitService/FindCommit"


def _lines(path: Path) -> list[dict[str, object]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a concurrent write, or not JSON
    return out


def _proxy_line(cluster: Cluster, relative_path: str) -> dict[str, object] | None:
    for entry in _lines(cluster.proxies[0].log_path):
        if entry.get("method") == FIND_COMMIT and entry.get("relative_path") == relative_path:
            return entry
    return None


async def test_a_call_without_correlation_id_is_joined_across_proxy_and_node(
    healthy: Cluster, source: Path, relative_path: str, tmp_path: Path
) -> None:
    address = healthy.proxies[0].address
    repo = repository(relative_path)
    async with grpc.aio.insecure_channel(address) as channel:
        await gitrepo.seed(channel, repo, source, tmp_path)
        helpers.wait_converged(address, relative_path)
        stub = commit_pb2_grpc.CommitServiceStub(channel)
        # No correlation metadata from this client: the proxy makes one up.
        await stub.FindCommit(commit_pb2.FindCommitRequest(repository=repo, revision=b"main"))

    wait_for(lambda: _proxy_line(healthy, relative_path) is not None, 10, what="proxy log line")
    entry = _proxy_line(healthy, relative_path)
    assert entry is not None
    correlation, node = entry["correlation_id"], entry["node"]
    assert isinstance(correlation, str) and correlation
    node_log = healthy.node(str(node)).log_path

    def node_has_it() -> bool:
        return any(
            e.get("correlation_id") == correlation and e.get("method") == FIND_COMMIT
            for e in _lines(node_log)
        )

    wait_for(node_has_it, 10, what=f"the node's log line with correlation id {correlation}")


def test_a_push_tagged_by_the_ssh_helper_is_logged_under_its_correlation_id(
    healthy: Cluster, source: Path, relative_path: str
) -> None:
    # GITQUORUM_CORRELATION_ID: what ties a push to its log lines on the proxy
    # and the nodes, and to its write intent (the fault suite matches the
    # verifier's verdicts to the client's writes by it).
    address = healthy.proxies[0].address
    helpers.create(address, relative_path)
    proc = subprocess.run(
        ["git", "push", "--quiet", helpers.url(address, relative_path), "main:refs/heads/main"],
        cwd=source,
        env=helpers.git_env(GITQUORUM_CORRELATION_ID="push-test-7"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    helpers.ok(proc)

    def logged(path: Path) -> bool:
        return any(
            e.get("correlation_id") == "push-test-7"
            and e.get("method") == "/gitaly.SSHService/SSHReceivePack"
            for e in _lines(path)
        )

    wait_for(lambda: logged(healthy.proxies[0].log_path), 10, what="the proxy's log line")
    wait_for(
        lambda: any(logged(n.log_path) for n in healthy.nodes),
        10,
        what="a node's log line with the push's correlation id",
    )
