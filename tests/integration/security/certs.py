"""Throwaway certificates for TLS tests, made with the ``openssl`` CLI.

``Pki.create(dir)`` makes a CA and, signed by it, one certificate for every
server in the tests (nodes, proxies, the gateway: all on loopback, so SAN
``IP:127.0.0.1`` and ``DNS:localhost``), usable as a client certificate too
(nodes and proxies present it when they dial), and one client-only
certificate. EC P-256 keys: generated in milliseconds.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

_SERVER_EXT = (
    "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
    "extendedKeyUsage=serverAuth,clientAuth\n"
    "basicConstraints=CA:FALSE\n"
)
_CLIENT_EXT = "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"


@dataclass(frozen=True)
class Pki:
    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def create(cls, directory: Path, name: str = "gitquorum-test") -> Pki:
        directory.mkdir(parents=True, exist_ok=True)

        def openssl(*args: str) -> None:
            subprocess.run(
                ["openssl", *args], check=True, capture_output=True, cwd=directory, timeout=60
            )

        def key(path: str) -> None:
            openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", path)

        key("ca.key")
        openssl(
            "req", "-x509", "-new", "-key", "ca.key", "-days", "2", "-subj", f"/CN={name} CA",
            "-out", "ca.pem",
        )  # fmt: skip
        for cert, extension in (("server", _SERVER_EXT), ("client", _CLIENT_EXT)):
            key(f"{cert}.key")
            openssl(
                "req", "-new", "-key", f"{cert}.key", "-subj", f"/CN={name} {cert}",
                "-out", f"{cert}.csr",
            )  # fmt: skip
            (directory / f"{cert}.ext").write_text(extension)
            openssl(
                "x509", "-req", "-in", f"{cert}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{cert}.ext", "-out", f"{cert}.pem",
            )  # fmt: skip
        return cls(
            directory,
            directory / "ca.pem",
            directory / "server.pem",
            directory / "server.key",
            directory / "client.pem",
            directory / "client.key",
        )
