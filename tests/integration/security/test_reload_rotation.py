"""A proxy rotates its secrets on SIGHUP, without a restart (docs/security.md).

A real cluster (etcd, nodes, a proxy process): the client secret the proxy
checks, and the node secret it signs calls to the nodes with, are replaced in
their files and take effect on `systemctl reload` (SIGHUP).
"""

from __future__ import annotations

import signal
from pathlib import Path

import grpc

from tests.harness.cluster import Cluster
from tests.harness.node import wait_for
from tests.integration.proxy.helpers import wait_all_healthy
from tests.integration.security.helpers import Endpoint, bearer, create, server_info


def refused(call: object) -> bool:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined,no-any-return]
    return False


def accepted(call: object) -> bool:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError:
        return False
    return True


def test_sighup_rotates_the_client_and_the_node_secret(tmp_path: Path) -> None:
    client_file, node_file = tmp_path / "client-token", tmp_path / "node-token"
    client_file.write_text("old-client\n")
    # The proxy signs with a node secret the nodes do not accept yet.
    node_file.write_text("old-node\n")
    cluster = Cluster(
        tmp_path / "cluster",
        proxy_settings={
            "auth": {"token_file": str(client_file), "node_token_file": str(node_file)}
        },
        node_env={"GITQUORUM_NODE_TOKEN": "new-node"},
    ).start()
    try:
        wait_all_healthy(cluster)
        proxy = cluster.proxies[0]
        old = Endpoint(proxy.address, metadata=bearer("old-client"))
        new = Endpoint(proxy.address, metadata=bearer("new-client"))
        assert server_info(old) is not None
        assert refused(lambda: server_info(new))
        # Writes fail: the nodes refuse the proxy's node secret.
        try:
            create(old, "rotation/before.git")
            raise AssertionError("the nodes accepted a secret they do not have")
        except grpc.RpcError:
            pass

        pid = proxy.pid
        client_file.write_text("new-client\n")
        node_file.write_text("new-node\n")
        proxy.signal(signal.SIGHUP)
        wait_for(lambda: accepted(lambda: server_info(new)), 20, what="the new client secret")
        assert refused(lambda: server_info(old))
        create(new, "rotation/after.git")  # signed with the new node secret: accepted
        assert proxy.pid == pid and proxy.alive()
    finally:
        cluster.close()
