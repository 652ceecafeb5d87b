"""Authentication with v2 tokens across a real cluster (etcd, three nodes, a proxy).

Clients hold the client secret, proxy and nodes the node secret. Without a
valid token of the right secret every call is UNAUTHENTICATED and says
nothing about the repository; with it, pushes (votes), clones and
replication work; no secret or token ever reaches a log file.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import grpc
import pytest

from tests.harness.cluster import Cluster
from tests.integration.proxy.helpers import url
from tests.integration.security.conftest import Secrets
from tests.integration.security.helpers import (
    Endpoint,
    bearer,
    create,
    git,
    ok,
    probes,
    push_after_node_stopped,
    server_info,
    wait_converged,
    work_tree,
)

UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
TOKEN = re.compile(r"v2\.[0-9a-f]{64}\.[0-9]+")


@pytest.fixture
def cluster(auth_cluster: tuple[Cluster, Secrets], request: pytest.FixtureRequest) -> Cluster:
    return auth_cluster[0]


@pytest.fixture
def keys(auth_cluster: tuple[Cluster, Secrets]) -> Secrets:
    return auth_cluster[1]


@pytest.fixture
def existing(cluster: Cluster, keys: Secrets) -> str:
    """A repository that exists (created with the client secret)."""
    relative = f"group/secret-project-{uuid.uuid4().hex[:8]}.git"
    create(Endpoint(cluster.proxies[0].address).with_token(keys.client), relative)
    return relative


def _assert_refused(
    answers: dict[str, tuple[grpc.StatusCode, str]], details: str, *hidden: str
) -> None:
    for name, (code, text) in answers.items():
        assert code == UNAUTHENTICATED, f"{name}: {code} {text}"
        assert text == details, f"{name}: {text!r}"
        for word in hidden:
            assert word not in text


def test_calls_without_a_token_are_unauthenticated(cluster: Cluster, existing: str) -> None:
    proxy = Endpoint(cluster.proxies[0].address)
    answers = probes(proxy, existing)
    assert len(answers) == 8
    _assert_refused(answers, "authentication required", existing, "secret-project", "default")
    # A missing repository gets the very same answers: no existence oracle.
    assert probes(proxy, "group/missing.git") == answers


@pytest.mark.parametrize("kind", ["wrong secret", "node secret", "stale", "future", "raw secret"])
def test_bad_tokens_are_unauthenticated(
    cluster: Cluster, keys: Secrets, existing: str, kind: str
) -> None:
    metadata = {
        "wrong secret": bearer("not-the-secret"),
        # Nodes' secret does not open the proxy either.
        "node secret": bearer(keys.node),
        # The token scheme allows 30 s of clock skew.
        "stale": bearer(keys.client, now=time.time() - 120),
        "future": bearer(keys.client, now=time.time() + 120),
        "raw secret": [("authorization", f"Bearer {keys.client}")],
    }[kind]
    proxy = Endpoint(cluster.proxies[0].address, metadata=metadata)
    _assert_refused(probes(proxy, existing), "authentication failed", existing, "default")


def test_nodes_refuse_the_client_secret(cluster: Cluster, keys: Secrets, existing: str) -> None:
    """A client cannot bypass the proxy: the client secret does not open a node."""
    node = cluster.nodes[0]
    storage = node.name
    for token in (None, keys.client):
        answers = probes(Endpoint(node.address).with_token(token), existing, storage)
        expected = "authentication required" if token is None else "authentication failed"
        _assert_refused(answers, expected, existing)
    # The node secret does open it: the refusals above are about the secret.
    info = server_info(Endpoint(node.address).with_token(keys.node))
    assert [s.storage_name for s in info.storage_statuses] == [storage]


def test_health_is_open(cluster: Cluster) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for address in (cluster.proxies[0].address, *(n.address for n in cluster.nodes)):
        with grpc.insecure_channel(address) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_push_clone_and_replication_with_the_client_secret(
    cluster: Cluster, keys: Secrets, tmp_path: Path
) -> None:
    proxy = Endpoint(cluster.proxies[0].address).with_token(keys.client)
    relative = f"group/pushed-{uuid.uuid4().hex[:8]}.git"
    create(proxy, relative)
    work = work_tree(tmp_path / "work")
    remote = url(proxy.address, relative)
    token_env = {"GITQUORUM_TOKEN_FILE": str(keys.client_file)}

    # No token: git-ssh reports the refusal, nothing is written.
    refused = git("push", remote, "main", cwd=work)
    assert refused.returncode != 0
    assert "refused access" in refused.stderr and "authentication required" in refused.stderr
    assert relative not in refused.stderr.split("refused access")[1]

    # The client secret: the push goes through the vote on all three replicas.
    ok(git("push", remote, "main", cwd=work, **token_env))
    first = wait_converged(proxy, relative)
    clone = ok(git("clone", "-q", remote, str(tmp_path / "clone"), **token_env))
    assert clone.returncode == 0
    assert (tmp_path / "clone" / "README.md").exists()
    # The secret from the environment works as well.
    ok(git("ls-remote", remote, GITQUORUM_TOKEN=keys.client))

    # Replication between nodes uses the node secret (gitaly-servers and git-ssh).
    cluster.nodes[2].terminate()
    (work / "more.txt").write_text("more\n")
    ok(git("add", "more.txt", cwd=work))
    ok(git("commit", "-q", "-m", "more", cwd=work))
    push_after_node_stopped(remote, work, **token_env)
    cluster.nodes[2].start()
    second = wait_converged(proxy, relative, timeout=60)
    assert second != first


def test_no_secret_or_token_in_any_log(cluster: Cluster, keys: Secrets, existing: str) -> None:
    """After refused and accepted calls of every kind, grep every log of the cluster."""
    proxy = Endpoint(cluster.proxies[0].address)
    probes(proxy.with_token(keys.client), existing)
    probes(Endpoint(proxy.address, metadata=bearer(keys.node)), existing)
    probes(Endpoint(cluster.nodes[0].address).with_token(keys.client), existing, "node1")
    logs = [p for p in cluster.base.rglob("*.log") if p.is_file()]
    assert len(logs) >= 5  # proxy, three nodes, etcd
    texts = {p: p.read_text(errors="replace") for p in logs}
    # The refusals were logged (with a reason, by the proxy and by the node)...
    assert any("call refused" in t and "wrong signature" in t for t in texts.values())
    for path, text in texts.items():
        # ... but never a secret, a token, or the header carrying one.
        for secret in (keys.client, keys.node):
            assert secret not in text, f"{secret[:6]}... in {path}"
        assert not TOKEN.search(text), f"a token in {path}"
        assert "Bearer" not in text, f"an authorization header in {path}"
