"""TLS everywhere, with authentication on: one cluster where every connection is secured.

The proxy and the nodes serve TLS (nodes require client certificates), the
proxy dials nodes with TLS, nodes dial the proxy back with TLS to vote and
each other to replicate, the HTTP gateway serves HTTPS and dials the proxy
with TLS, and etcd serves TLS with client certificates and user/password
authentication. Certificates come from a CA made for the test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.etcd_store import EtcdConfig, EtcdStore
from tests.harness import gitrepo
from tests.harness.gateway import http_gateway
from tests.integration.proxy.helpers import url
from tests.integration.security.conftest import ETCD_USER, Secure
from tests.integration.security.helpers import (
    Endpoint,
    create,
    credentials,
    git,
    ok,
    probes,
    push_after_node_stopped,
    server_info,
    status,
    wait_converged,
    work_tree,
)


@pytest.fixture
def secure(secure_cluster: Secure) -> Secure:
    return secure_cluster


def proxy_endpoint(secure: Secure, token: bool = True) -> Endpoint:
    endpoint = Endpoint(secure.cluster.proxies[0].address, credentials(secure.pki.ca))
    return endpoint.with_token(secure.keys.client if token else None)


def tls_env(secure: Secure) -> dict[str, str]:
    return {
        "GITQUORUM_TLS_CA": str(secure.pki.ca),
        "GITQUORUM_TOKEN_FILE": str(secure.keys.client_file),
    }


def test_every_listener_refuses_plaintext_and_strangers(secure: Secure) -> None:
    pki, keys = secure.pki, secure.keys
    proxy, node = secure.cluster.proxies[0].address, secure.cluster.nodes[0].address
    unavailable = grpc.StatusCode.UNAVAILABLE
    attempts = {
        "plaintext to the proxy": Endpoint(proxy).with_token(keys.client),
        "plaintext to a node": Endpoint(node).with_token(keys.node),
        # Nodes require a client certificate of the cluster's CA.
        "node without client certificate": Endpoint(node, credentials(pki.ca)).with_token(
            keys.node
        ),
        # The proxy's certificate is not signed by etcd's CA.
        "proxy verified with another CA": Endpoint(
            proxy, credentials(Path(secure.etcd_config.ca_file or ""))
        ).with_token(keys.client),
    }
    for what, endpoint in attempts.items():
        code, details = status(lambda e=endpoint: server_info(e))
        assert code == unavailable, f"{what}: {code} {details}"
    # The right CA and client certificate, and the node secret: a node answers.
    trusted = Endpoint(node, credentials(pki.ca, pki.client_cert, pki.client_key))
    info = server_info(trusted.with_token(keys.node))
    assert [s.storage_name for s in info.storage_statuses] == ["node1"]
    # TLS does not replace the token.
    assert status(lambda: server_info(trusted))[0] == grpc.StatusCode.UNAUTHENTICATED


def test_proxy_reaches_every_node_over_tls(secure: Secure) -> None:
    info = server_info(proxy_endpoint(secure))
    statuses = {s.storage_name: (s.readable, s.writeable) for s in info.storage_statuses}
    assert statuses == {"default": (True, True)}
    answers = probes(proxy_endpoint(secure, token=False), "group/any.git")
    assert {code for code, _ in answers.values()} == {grpc.StatusCode.UNAUTHENTICATED}


def test_push_votes_clone_and_replication_over_tls(secure: Secure, tmp_path: Path) -> None:
    proxy = proxy_endpoint(secure)
    relative = f"group/tls-{uuid.uuid4().hex[:8]}.git"
    create(proxy, relative)
    work = work_tree(tmp_path / "work")
    remote = url(proxy.address, relative)

    # git-ssh without the CA dials plaintext: the TLS proxy does not answer.
    refused = git(
        "push", remote, "main", cwd=work, GITQUORUM_TOKEN_FILE=str(secure.keys.client_file)
    )
    assert refused.returncode != 0 and "cannot reach gitquorum" in refused.stderr

    # Votes: every node dials the proxy back at tls://... with the cluster's CA.
    ok(git("push", remote, "main", cwd=work, **tls_env(secure)))
    first = wait_converged(proxy, relative)
    ok(git("clone", "-q", remote, str(tmp_path / "clone"), **tls_env(secure)))
    assert gitrepo.git("rev-parse", "HEAD", cwd=tmp_path / "clone") == gitrepo.git(
        "rev-parse", "HEAD", cwd=work
    )

    # Replication: the returning node fetches from another over mutual TLS.
    node = secure.cluster.nodes[2]
    node.terminate()
    (work / "more.txt").write_text("more\n")
    gitrepo.git("add", "more.txt", cwd=work)
    gitrepo.git("commit", "-q", "-m", "more", cwd=work)
    try:
        push_after_node_stopped(remote, work, **tls_env(secure))
    finally:
        # Whatever happened, the module's other tests get their three nodes back.
        node.start()
    assert wait_converged(proxy, relative, timeout=60) != first


@pytest.fixture
def gateway(secure: Secure, tmp_path: Path) -> Iterator[str]:
    """``gitquorum http`` serving HTTPS, dialling the proxy with TLS and the client secret."""
    pki, keys = secure.pki, secure.keys
    with http_gateway(
        secure.cluster.proxies[0].address,
        secure.cluster.base / "logs",
        tmp_path,
        "--proxy-ca", str(pki.ca),
        "--proxy-token-file", str(keys.client_file),
        "--token-file", str(keys.client_file),
        "--tls-cert", str(pki.server_cert),
        "--tls-key", str(pki.server_key),
        "--create-on-push",
    ) as address:  # fmt: skip
        yield address


def test_https_gateway(secure: Secure, gateway: str, tmp_path: Path) -> None:
    work = work_tree(tmp_path / "work")
    relative = f"group/https-{uuid.uuid4().hex[:8]}.git"
    with_secret = f"https://user:{secure.keys.client}@{gateway}/{relative}"
    env = {"GIT_SSL_CAINFO": str(secure.pki.ca), "GIT_TERMINAL_PROMPT": "0"}
    # The gateway creates the repository on the first push, through the TLS proxy.
    ok(git("push", with_secret, "main", cwd=work, **env))
    ok(git("clone", "-q", with_secret, str(tmp_path / "clone"), **env))
    assert (tmp_path / "clone" / "README.md").read_text() == (work / "README.md").read_text()
    wait_converged(proxy_endpoint(secure), relative)

    # Without the CA git does not trust the gateway; without the secret it is refused.
    untrusted = git("ls-remote", with_secret, GIT_TERMINAL_PROMPT="0")
    assert untrusted.returncode != 0 and "certificate" in untrusted.stderr.lower()
    anonymous = git("ls-remote", f"https://{gateway}/{relative}", **env)
    # git got the 401 challenge and, not allowed to prompt, gives up.
    assert anonymous.returncode != 0 and "could not read Username" in anonymous.stderr
    # Plain HTTP to the HTTPS port is no way in either.
    plain = git("ls-remote", f"http://user:{secure.keys.client}@{gateway}/{relative}", **env)
    assert plain.returncode != 0


def test_etcd_needs_client_certificates_and_the_user(secure: Secure) -> None:
    tls = secure.etcd_config

    async def attempt(**settings: object) -> bytes | str:
        store = EtcdStore(EtcdConfig(request_timeout=2.0, attempts=1, **settings))  # type: ignore[arg-type]
        try:
            await store.connect()
            found = await store.get_prefix("/gitquorum/")
            return b"".join(kv.key.encode() for kv in found.kvs)
        except StoreUnavailable as exc:
            return str(exc)
        finally:
            await store.close()

    endpoints = tls.endpoints
    certs = {"ca_file": tls.ca_file, "cert_file": tls.cert_file, "key_file": tls.key_file}
    user = {"username": ETCD_USER, "password": secure.etcd_password}
    # The proxy wrote its records through TLS and the user: they are there.
    keys = asyncio.run(attempt(endpoints=endpoints, **certs, **user))
    assert isinstance(keys, bytes) and b"/gitquorum/default/" in keys
    # No client certificate, no user, a wrong password: nothing.
    assert isinstance(asyncio.run(attempt(endpoints=endpoints, ca_file=tls.ca_file, **user)), str)
    assert isinstance(asyncio.run(attempt(endpoints=endpoints, **certs)), str)
    wrong = asyncio.run(attempt(endpoints=endpoints, **certs, username=ETCD_USER, password="x"))
    assert isinstance(wrong, str) and "authentication" in wrong


def test_no_secret_in_any_log(secure: Secure) -> None:
    logs = [p for p in secure.cluster.base.rglob("*.log") if p.is_file()]
    assert len(logs) >= 5
    for path in logs:
        text = path.read_text(errors="replace")
        for secret in (secure.keys.client, secure.keys.node, secure.etcd_password):
            assert secret not in text, f"a secret in {path}"
        assert "Bearer" not in text, f"an authorization header in {path}"
