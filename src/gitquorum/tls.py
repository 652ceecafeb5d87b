"""TLS for gRPC listeners and channels, from PEM files.

* A listener (node, proxy) serves TLS with ``ServerTLS(cert_file, key_file)``;
  with ``client_ca_file`` it also requires a client certificate signed by that
  CA (mutual TLS).
* A channel dials TLS with ``ClientTLS(ca_file, cert_file, key_file)``: the CA
  that verifies the server (empty: the system's roots) and, optionally, the
  certificate this side presents when the server asks for one.

Addresses that travel between processes carry their scheme, as Gitaly's do:
``tls://host:port`` is dialled with TLS, ``tcp://host:port`` and bare
``host:port`` in plaintext (see :func:`dial`).

A listener reads its files at start and again on a reload (SIGHUP, see
:class:`ReloadableServerTLS`): new handshakes get the new certificate,
connections already open keep theirs. Channels read theirs when built, so a
replaced client certificate takes effect on the next restart of the process
that dials (see docs/security.md for rotation).
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from gitquorum.config import TlsSettings
from gitquorum.errors import ConfigError

TLS_SCHEME = "tls://"
TCP_SCHEME = "tcp://"

ChannelOptions = Sequence[tuple[str, Any]]


def read_pem(path: str, what: str) -> bytes:
    """The bytes of a PEM file; ConfigError naming the file when unusable.

    grpc reports a bad file only at the first handshake, with a message that
    names no file: checking here turns that into a start-up error.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{what} {path}: cannot read: {exc.strerror}"]) from exc
    if b"-----BEGIN " not in data:
        raise ConfigError([f"{what} {path}: not a PEM file"])
    return data


@dataclass(frozen=True)
class ServerTLS:
    """A listener's certificate and key; ``client_ca_file`` turns on mutual TLS."""

    cert_file: str
    key_file: str
    client_ca_file: str = ""

    def credentials(self) -> grpc.ServerCredentials:
        pair = (
            read_pem(self.key_file, "TLS key file"),
            read_pem(self.cert_file, "TLS certificate file"),
        )
        client_ca = (
            read_pem(self.client_ca_file, "TLS client CA file") if self.client_ca_file else None
        )
        return grpc.ssl_server_credentials(
            [pair], root_certificates=client_ca, require_client_auth=client_ca is not None
        )


class ReloadableServerTLS:
    """A listener's TLS whose certificate, key and client CA can be re-read.

    gRPC asks the fetcher for a new configuration at each handshake; it hands
    over the one :meth:`reload` prepared (files read and checked on the
    calling thread), once, and None otherwise (keep the current one). A file
    that cannot be read makes :meth:`reload` raise and changes nothing.
    """

    def __init__(self, settings: ServerTLS) -> None:
        self.settings = settings
        self._pending: Any = None
        self._initial = self._configuration()

    def _configuration(self) -> Any:
        s = self.settings
        pair = (read_pem(s.key_file, "TLS key file"), read_pem(s.cert_file, "TLS certificate file"))
        client_ca = read_pem(s.client_ca_file, "TLS client CA file") if s.client_ca_file else None
        try:
            # gRPC finds a key that does not match its certificate only at a
            # handshake; ssl finds it now, while the old pair still serves.
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                s.cert_file, s.key_file
            )
        except (OSError, ssl.SSLError) as exc:
            problem = f"TLS certificate {s.cert_file} with key {s.key_file}: {exc}"
            raise ConfigError([problem]) from exc
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.dynamic_ssl_server_credentials(
            self._initial,
            self._fetch,
            require_client_authentication=bool(self.settings.client_ca_file),
        )

    def _fetch(self) -> Any:
        # Called by gRPC's threads: taking the pending value is one swap.
        pending, self._pending = self._pending, None
        return pending

    def reload(self) -> None:
        """Read the files again; new handshakes use them. ConfigError if unusable."""
        self._pending = self._configuration()


@dataclass(frozen=True)
class ClientTLS:
    """How this side dials TLS: the CA it trusts and the certificate it presents."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    def credentials(self) -> grpc.ChannelCredentials:
        ca = read_pem(self.ca_file, "TLS CA file") if self.ca_file else None
        # Both or neither: grpc needs the key to present the certificate.
        key = read_pem(self.key_file, "TLS key file") if self.cert_file and self.key_file else None
        cert = (
            read_pem(self.cert_file, "TLS certificate file")
            if self.cert_file and self.key_file
            else None
        )
        return grpc.ssl_channel_credentials(ca, key, cert)


def server_tls(settings: TlsSettings) -> ServerTLS | None:
    """The listener side of a ``tls`` section; None when it has no certificate."""
    if not settings.cert_file:
        return None
    return ServerTLS(settings.cert_file, settings.key_file, settings.client_ca_file)


def client_tls(settings: TlsSettings) -> ClientTLS:
    """The dialling side of a ``tls`` section (its own certificate as client certificate)."""
    return ClientTLS(settings.ca_file, settings.cert_file, settings.key_file)


def split(address: str) -> tuple[str, bool]:
    """(gRPC target, whether to dial TLS) of ``tls://h:p``, ``tcp://h:p`` or ``h:p``."""
    if address.startswith(TLS_SCHEME):
        return address[len(TLS_SCHEME) :], True
    if address.startswith(TCP_SCHEME):
        return address[len(TCP_SCHEME) :], False
    return address, False


def url(address: str, tls: bool) -> str:
    """The address with its scheme, as advertised to other processes."""
    target, _ = split(address)
    return f"{TLS_SCHEME if tls else TCP_SCHEME}{target}"


def aio_channel(
    target: str, client: ClientTLS | None, options: ChannelOptions = ()
) -> grpc.aio.Channel:
    """A TLS channel when ``client`` is given, a plaintext one otherwise."""
    if client is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, client.credentials(), options=list(options))


def dial(address: str, client: ClientTLS | None, options: ChannelOptions = ()) -> grpc.aio.Channel:
    """A channel to a schemed address: ``tls://`` with ``client`` (or the system
    roots when it is None), anything else in plaintext."""
    target, tls = split(address)
    return aio_channel(target, (client or ClientTLS()) if tls else None, options)
