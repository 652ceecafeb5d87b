"""A real node under a systemd-like supervisor: sd_notify and SIGHUP reloads.

The test binds the unix datagram socket systemd would pass in $NOTIFY_SOCKET,
starts ``gitquorum node`` with it, and reads what the node says: READY=1 once
it serves, WATCHDOG=1 pings, RELOADING=1/READY=1 around a SIGHUP, STOPPING=1
on SIGTERM. Between those, a rotated token file and a replaced certificate
take effect without a restart.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gitquorum import tokens
from gitquorum.gitaly import server_pb2, server_pb2_grpc
from tests.harness.node import NodeProcess
from tests.integration.security.certs import Pki


class Supervisor:
    """The NOTIFY_SOCKET end: collects the node's notifications."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[str] = []

    def expect(self, state: str, timeout: float = 20.0) -> None:
        """Wait for ``state``; everything received before it is consumed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                break
            self.received.append(message)
            if message == state:
                return
        raise AssertionError(f"no {state} within {timeout}s; got {self.received}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Supervisor]:
    s = Supervisor(tmp_path / "notify.sock")
    yield s
    s.close()


def server_info(node: NodeProcess, secret: str) -> grpc.StatusCode:
    metadata = [("authorization", f"Bearer {tokens.v2_token(secret.encode())}")]
    with grpc.insecure_channel(node.address) as channel:
        try:
            server_pb2_grpc.ServerServiceStub(channel).ServerInfo(
                server_pb2.ServerInfoRequest(), metadata=metadata, timeout=10
            )
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return,attr-defined]
    return grpc.StatusCode.OK


def test_notifies_systemd_and_rotates_its_token_on_sighup(
    tmp_path: Path, supervisor: Supervisor
) -> None:
    token_file = tmp_path / "node-token"
    token_file.write_text("old-secret\n")
    node = NodeProcess(
        "n1",
        tmp_path / "storage",
        tmp_path,
        env={"NOTIFY_SOCKET": str(supervisor.path), "WATCHDOG_USEC": "200000"},
        extra_args=["--token-file", str(token_file)],
    )
    node.start()
    try:
        supervisor.expect("READY=1")
        supervisor.expect("WATCHDOG=1")
        supervisor.expect("WATCHDOG=1")  # pinged again, from the event loop
        assert server_info(node, "old-secret") == grpc.StatusCode.OK
        assert server_info(node, "new-secret") == grpc.StatusCode.UNAUTHENTICATED

        # Rotation: the file now holds only the new secret; SIGHUP, no restart.
        pid = node.pid
        token_file.write_text("new-secret\n")
        node.signal(signal.SIGHUP)
        supervisor.expect("RELOADING=1")
        supervisor.expect("READY=1")
        assert server_info(node, "new-secret") == grpc.StatusCode.OK
        assert server_info(node, "old-secret") == grpc.StatusCode.UNAUTHENTICATED

        # A broken file is refused: the node keeps serving with the secret it had.
        token_file.write_text("\n")
        node.signal(signal.SIGHUP)
        supervisor.expect("RELOADING=1")
        supervisor.expect("READY=1")
        assert server_info(node, "new-secret") == grpc.StatusCode.OK
        assert node.alive() and node.pid == pid
        assert "reload failed" in node.log_tail()

        node.signal(signal.SIGTERM)
        supervisor.expect("STOPPING=1")
    finally:
        node.terminate()


def served_certificate(address: str) -> str:
    """The subject CN of the certificate the listener presents to a new handshake."""
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with context.wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    pem = ssl.DER_cert_to_PEM_cert(der)
    import subprocess

    out = subprocess.run(
        ["openssl", "x509", "-noout", "-subject"], input=pem, capture_output=True, text=True
    )
    return out.stdout


def test_a_replaced_certificate_is_served_after_sighup(
    tmp_path: Path, supervisor: Supervisor
) -> None:
    first = Pki.create(tmp_path / "first", name="first")
    second = Pki.create(tmp_path / "second", name="second")
    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    shutil.copy(first.server_cert, cert)
    shutil.copy(first.server_key, key)
    node = NodeProcess(
        "n1",
        tmp_path / "storage",
        tmp_path,
        env={"NOTIFY_SOCKET": str(supervisor.path)},
        extra_args=["--tls-cert", str(cert), "--tls-key", str(key)],
    )
    node.start()
    try:
        supervisor.expect("READY=1")
        assert "first server" in served_certificate(node.address)
        # A key that does not match the certificate is refused; the old pair keeps serving.
        shutil.copy(second.server_cert, cert)
        node.signal(signal.SIGHUP)
        supervisor.expect("READY=1")
        assert "first server" in served_certificate(node.address)
        shutil.copy(second.server_key, key)
        node.signal(signal.SIGHUP)
        supervisor.expect("READY=1")
        assert "second server" in served_certificate(node.address)
    finally:
        node.terminate()
