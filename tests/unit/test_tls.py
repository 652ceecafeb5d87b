"""TLS helpers: addresses with schemes, PEM checks, and real handshakes in-process.

Certificates are made per session with the openssl CLI (tests/integration/security/certs.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gitquorum import tls
from gitquorum.config import TlsSettings, node_config_from_dict, proxy_config_from_dict
from gitquorum.errors import ConfigError
from tests.integration.security.certs import Pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("other-pki"), name="stranger")


def test_split_and_url() -> None:
    assert tls.split("tls://127.0.0.1:5") == ("127.0.0.1:5", True)
    assert tls.split("tcp://127.0.0.1:5") == ("127.0.0.1:5", False)
    assert tls.split("127.0.0.1:5") == ("127.0.0.1:5", False)
    assert tls.split("unix:///run/x.sock") == ("unix:///run/x.sock", False)
    assert tls.url("127.0.0.1:5", True) == "tls://127.0.0.1:5"
    assert tls.url("tls://127.0.0.1:5", False) == "tcp://127.0.0.1:5"


def test_read_pem_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"TLS CA file .*missing\.pem: cannot read"):
        tls.read_pem(str(tmp_path / "missing.pem"), "TLS CA file")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a PEM file"):
        tls.ClientTLS(str(garbage)).credentials()
    with pytest.raises(ConfigError, match="TLS key file"):
        tls.ServerTLS(str(garbage), str(tmp_path / "nokey")).credentials()


def test_settings_conversions() -> None:
    assert tls.server_tls(TlsSettings()) is None
    assert tls.server_tls(TlsSettings("c", "k", "ca", "cca")) == tls.ServerTLS("c", "k", "cca")
    assert tls.client_tls(TlsSettings("c", "k", "ca", "cca")) == tls.ClientTLS("ca", "c", "k")


def test_node_config_tls_section() -> None:
    base = {"listen": "127.0.0.1:0", "storages": [{"name": "s", "path": "/srv/s"}]}
    assert node_config_from_dict(base).tls == TlsSettings()
    config = node_config_from_dict(
        {**base, "tls": {"cert_file": "/c", "key_file": "/k", "client_ca_file": "/ca"}}
    )
    assert config.tls == TlsSettings("/c", "/k", "", "/ca")
    # Dialling tls:// proxies only: a CA without a listener certificate is fine.
    assert node_config_from_dict({**base, "tls": {"ca_file": "/ca"}}).tls.ca_file == "/ca"
    with pytest.raises(ConfigError) as caught:
        node_config_from_dict({**base, "tls": {"cert_file": "/c", "bogus": 1, "client_ca_file": 5}})
    assert set(caught.value.problems) == {
        "tls.key_file: required with cert_file and key_file together",
        "tls.bogus: unknown option",
        "tls.client_ca_file: expected a string",
    }
    with pytest.raises(ConfigError, match=r"tls.cert_file: required: the listener"):
        node_config_from_dict({**base, "tls": {"client_ca_file": "/ca"}})


def test_proxy_config_tls_sections() -> None:
    base = {
        "listen": "127.0.0.1:0",
        "etcd": {"endpoints": ["127.0.0.1:2379"]},
        "virtual_storages": [{"name": "d", "nodes": [{"storage": "n", "address": "h:1"}]}],
    }
    plain = proxy_config_from_dict(base)
    assert plain.tls == TlsSettings() and plain.node_tls is None
    # An empty node_tls section still means TLS (verified with the system's roots).
    assert proxy_config_from_dict({**base, "node_tls": {}}).node_tls == TlsSettings()
    config = proxy_config_from_dict(
        {
            **base,
            "tls": {"cert_file": "/c", "key_file": "/k"},
            "node_tls": {"ca_file": "/ca", "cert_file": "/nc", "key_file": "/nk"},
        }
    )
    assert config.tls == TlsSettings("/c", "/k")
    assert config.node_tls == TlsSettings("/nc", "/nk", "/ca")
    with pytest.raises(ConfigError) as caught:
        proxy_config_from_dict({**base, "node_tls": {"client_ca_file": "/x", "key_file": "/k"}})
    assert set(caught.value.problems) == {
        "node_tls.client_ca_file: unknown option",
        "node_tls.cert_file: required with cert_file and key_file together",
    }


async def _serve(server_tls: tls.ServerTLS) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_secure_port("127.0.0.1:0", server_tls.credentials())
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _check(channel: grpc.aio.Channel) -> grpc.StatusCode:
    try:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        await channel.close()
    return grpc.StatusCode.OK


@pytest.fixture
async def tls_server(pki: Pki) -> AsyncIterator[str]:
    server, address = await _serve(tls.ServerTLS(str(pki.server_cert), str(pki.server_key)))
    yield address
    await server.stop(None)


@pytest.fixture
async def mtls_server(pki: Pki) -> AsyncIterator[str]:
    server, address = await _serve(
        tls.ServerTLS(str(pki.server_cert), str(pki.server_key), str(pki.ca))
    )
    yield address
    await server.stop(None)


async def test_tls_handshake_verifies_the_server(tls_server: str, pki: Pki, other_pki: Pki) -> None:
    trusted = tls.ClientTLS(str(pki.ca))
    assert await _check(tls.dial(f"tls://{tls_server}", trusted)) == grpc.StatusCode.OK
    # The certificate names 127.0.0.1 and localhost: both verify.
    port = tls_server.rpartition(":")[2]
    assert await _check(tls.dial(f"tls://localhost:{port}", trusted)) == grpc.StatusCode.OK
    # Another CA, the system's roots, or plaintext: no connection.
    stranger = tls.ClientTLS(str(other_pki.ca))
    unavailable = grpc.StatusCode.UNAVAILABLE
    assert await _check(tls.dial(f"tls://{tls_server}", stranger)) == unavailable
    assert await _check(tls.dial(f"tls://{tls_server}", None)) == unavailable
    assert await _check(tls.dial(f"tcp://{tls_server}", trusted)) == unavailable


async def test_mutual_tls_requires_a_client_certificate_of_the_ca(
    mtls_server: str, pki: Pki, other_pki: Pki
) -> None:
    address = f"tls://{mtls_server}"
    ca = str(pki.ca)
    for cert, key in ((pki.client_cert, pki.client_key), (pki.server_cert, pki.server_key)):
        client = tls.ClientTLS(ca, str(cert), str(key))
        assert await _check(tls.dial(address, client)) == grpc.StatusCode.OK
    unavailable = grpc.StatusCode.UNAVAILABLE
    assert await _check(tls.dial(address, tls.ClientTLS(ca))) == unavailable
    foreign = tls.ClientTLS(ca, str(other_pki.client_cert), str(other_pki.client_key))
    assert await _check(tls.dial(address, foreign)) == unavailable
