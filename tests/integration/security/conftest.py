"""Clusters with security on, started once per module that uses them.

* ``auth_cluster``: client and node secrets (plaintext transport). The proxy
  reads both from token files; the nodes read the node secret from
  ``$GITQUORUM_NODE_TOKEN`` (the other supported source).
* ``secure_cluster``: everything at once: TLS on the proxy's and the nodes'
  listeners (nodes require client certificates), TLS from the proxy to the
  nodes, from the nodes back to the proxy (votes) and between nodes
  (replication); client and node secrets; etcd serving TLS with client
  certificates and user/password authentication, the proxy logging in as a
  user limited to the cluster's keys.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from etcd3aio import PermissionType, prefix_range_end
from etcd3aio.auth import AuthService

from gitquorum.cluster.etcd_store import EtcdConfig, EtcdStore
from tests.harness.cluster import Cluster
from tests.harness.etcd import EtcdCluster
from tests.integration.proxy.helpers import wait_all_healthy
from tests.integration.security.certs import Pki

ETCD_USER = "gitquorum"
ETCD_PREFIX = "/gitquorum/"


@dataclass(frozen=True)
class Secrets:
    client: str
    node: str
    client_file: Path
    node_file: Path


def make_secrets(directory: Path) -> Secrets:
    directory.mkdir(parents=True, exist_ok=True)
    client, node = f"client-{secrets.token_hex(16)}", f"node-{secrets.token_hex(16)}"
    client_file, node_file = directory / "client-token", directory / "node-token"
    for path, value in ((client_file, client), (node_file, node)):
        path.write_text(value + "\n")
        path.chmod(0o600)
    return Secrets(client, node, client_file, node_file)


def _settings(extra: dict[str, object]) -> dict[str, object]:
    # Repairs start within a second of a node's return.
    return {"replication": {"reconcile_interval": "1s"}, **extra}


@pytest.fixture(scope="module")
def auth_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Secrets]]:
    base = tmp_path_factory.mktemp("auth-cluster")
    keys = make_secrets(base / "secrets")
    cluster = Cluster(
        base,
        proxy_settings=_settings(
            {"auth": {"token_file": str(keys.client_file), "node_token_file": str(keys.node_file)}}
        ),
        node_env={"GITQUORUM_NODE_TOKEN": keys.node},
    ).start()
    try:
        wait_all_healthy(cluster)
        yield cluster, keys
    finally:
        cluster.close()


@dataclass(frozen=True)
class Secure:
    cluster: Cluster
    keys: Secrets
    pki: Pki
    etcd_password: str
    etcd_config: EtcdConfig


async def _enable_etcd_auth(etcd: EtcdCluster, password: str) -> EtcdConfig:
    """root (needed to turn auth on) and a user allowed only the gitquorum keys."""
    files = etcd.tls_files
    assert files is not None
    tls = EtcdConfig(
        endpoints=etcd.endpoints,
        ca_file=str(files.ca),
        cert_file=str(files.client_cert),
        key_file=str(files.client_key),
    )
    store = EtcdStore(tls)
    try:
        auth = AuthService(store._channel)
        await auth.user_add("root", secrets.token_hex(16), timeout=10)
        await auth.user_grant_role("root", "root", timeout=10)
        await auth.role_add(ETCD_USER, timeout=10)
        await auth.role_grant_permission(
            ETCD_USER,
            ETCD_PREFIX,
            prefix_range_end(ETCD_PREFIX.encode()),
            perm_type=PermissionType.READWRITE,
            timeout=10,
        )
        await auth.user_add(ETCD_USER, password, timeout=10)
        await auth.user_grant_role(ETCD_USER, ETCD_USER, timeout=10)
        await auth.auth_enable(timeout=10)
    finally:
        await store.close()
    return tls


@pytest.fixture(scope="module")
def secure_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    import asyncio

    base = tmp_path_factory.mktemp("secure-cluster")
    keys = make_secrets(base / "secrets")
    pki = Pki.create(base / "pki")
    etcd = EtcdCluster(1, base / "etcd", tls=True).start()
    password = f"etcd-{secrets.token_hex(12)}"
    try:
        etcd_tls = asyncio.run(_enable_etcd_auth(etcd, password))
    except BaseException:
        etcd.close()
        raise
    password_file = base / "secrets" / "etcd-password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    cert, key, ca = str(pki.server_cert), str(pki.server_key), str(pki.ca)
    cluster = Cluster(
        base,
        etcd=etcd,
        proxy_settings=_settings(
            {
                "etcd": {
                    "endpoints": etcd.endpoints,
                    "ca_file": etcd_tls.ca_file,
                    "cert_file": etcd_tls.cert_file,
                    "key_file": etcd_tls.key_file,
                    "username": ETCD_USER,
                    "password_file": str(password_file),
                },
                "auth": {
                    "token_file": str(keys.client_file),
                    "node_token_file": str(keys.node_file),
                },
                "tls": {"cert_file": cert, "key_file": key},
                "node_tls": {"ca_file": ca, "cert_file": cert, "key_file": key},
            }
        ),
        node_args=[
            "--token-file",
            str(keys.node_file),
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--tls-client-ca",
            ca,
            "--tls-ca",
            ca,
        ],
    )
    try:
        cluster.start()
        wait_all_healthy(cluster)
        yield Secure(cluster, keys, pki, password, etcd_tls)
    finally:
        cluster.close()
