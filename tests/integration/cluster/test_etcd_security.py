from __future__ import annotations

import pytest
from etcd3aio.auth import AuthService

from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.keys import Keyspace
from tests.harness.etcd import EtcdCluster
from tests.integration.cluster.conftest import StoreFactory


async def test_tls_client_certificates_and_user_password(
    tmp_path,
    make_store: StoreFactory,
    keys: Keyspace,  # type: ignore[no-untyped-def]
) -> None:
    with EtcdCluster(1, tmp_path / "etcd", tls=True) as cluster:
        files = cluster.tls_files
        assert files is not None
        tls = {
            "ca_file": str(files.ca),
            "cert_file": str(files.client_cert),
            "key_file": str(files.client_key),
        }
        secure = make_store(cluster, **tls)
        await secure.put(f"{keys.prefix}tls", b"ok")
        assert (await secure.get(f"{keys.prefix}tls")).value == b"ok"  # type: ignore[union-attr]
        plain = make_store(cluster, request_timeout=1.0, attempts=1)
        with pytest.raises(StoreUnavailable):
            await plain.get(f"{keys.prefix}tls")

        # Turn on authentication: a root user, then auth.
        auth = AuthService(secure._channel)
        await auth.user_add("root", "secret", timeout=5)
        await auth.user_grant_role("root", "root", timeout=5)
        await auth.auth_enable(timeout=5)

        wrong = make_store(cluster, **tls, username="root", password="nope", request_timeout=2.0)
        with pytest.raises(StoreUnavailable, match="authentication"):
            await wrong.connect()
        user = make_store(cluster, **tls, username="root", password="secret")
        await user.connect()
        revision = await user.put(f"{keys.prefix}auth", b"with a token")
        assert (await user.get(f"{keys.prefix}auth")).value == b"with a token"  # type: ignore[union-attr]
        async for batch in user.watch(f"{keys.prefix}auth", start_revision=revision):
            if not batch.events:
                continue  # a progress notification (the store contract's empty batch)
            assert batch.events[0].kv.value == b"with a token"
            break
        lease = await user.grant(5)
        assert await user.keep_alive(lease.id) > 0
