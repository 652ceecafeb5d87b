"""The gateway's side of gRPC: one channel to a proxy (or node) and its calls."""

from __future__ import annotations

from typing import Any

import grpc

from gitquorum import log, tls, tokens
from gitquorum.gitaly import (
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
    smarthttp_pb2,
    smarthttp_pb2_grpc,
)
from gitquorum.wire.options import message_size_options, reconnect_options

# A pack message is at most one body chunk, but the ref advertisement of a
# repository with many refs arrives in whatever size the backend chose. A
# restarted proxy is back in service within seconds, not after grpc's default
# two-minute reconnect backoff.
# Round robin: a target that resolves to several proxies (dns:///proxies:2305,
# ipv4:10.0.0.11:2305,10.0.0.12:2305) spreads calls over the ones that connect;
# one address behaves as before.
# No BDP probing: with it, grpc advertises a receive window of about 4 MiB per
# stream (its target at low memory pressure), and while git reads more slowly
# than the proxy sends, the gateway buffers up to that much per clone (peak
# RSS growth 5.7-8.2 MB in a 20 MB clone, 11 MB once on a loaded machine).
# Off, the window stays at 64 KiB plus the message being read: 1.5-3.2 MB, at
# the same loopback throughput. Over a link with a real round trip a clone
# gets about one message (up to 256 KiB) plus 64 KiB per round trip, so the
# gateway belongs next to its proxies.
_CHANNEL_OPTIONS = [
    *message_size_options(),
    *reconnect_options(200, 2_000),
    ("grpc.lb_policy_name", "round_robin"),
    ("grpc.http2.bdp_probe", 0),
]


class Backend:
    """SmartHTTPService (and CreateRepository) on one gRPC target."""

    def __init__(
        self,
        target: str,
        storage: str,
        secret: bytes | None = None,
        client_tls: tls.ClientTLS | None = None,
    ) -> None:
        self.target = target
        self.storage = storage
        self._secret = secret
        # Set: the proxy is dialled with TLS (gitquorum http --proxy-ca).
        self.client_tls = client_tls
        self._channel: grpc.aio.Channel | None = None

    async def open(self) -> None:
        self._channel = tls.aio_channel(self.target, self.client_tls, _CHANNEL_OPTIONS)
        self.smarthttp = smarthttp_pb2_grpc.SmartHTTPServiceStub(self._channel)
        self.repositories = repository_pb2_grpc.RepositoryServiceStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    def repository(self, relative_path: str) -> shared_pb2.Repository:
        return shared_pb2.Repository(storage_name=self.storage, relative_path=relative_path)

    def metadata(self) -> list[tuple[str, str]]:
        """Per call: a v2 token carries its own timestamp and expires."""
        metadata = [(log.CORRELATION_METADATA_KEYS[0], log.correlation_id.get())]
        if self._secret is not None:
            metadata.append(tokens.bearer(self._secret))
        return metadata

    def info_refs(
        self, relative_path: str, push: bool, git_protocol: str, timeout: float
    ) -> grpc.aio.UnaryStreamCall[Any, Any]:
        request = smarthttp_pb2.InfoRefsRequest(
            repository=self.repository(relative_path), git_protocol=git_protocol
        )
        method = self.smarthttp.InfoRefsReceivePack if push else self.smarthttp.InfoRefsUploadPack
        return method(request, metadata=self.metadata(), timeout=timeout)

    def post_upload_pack(self) -> grpc.aio.StreamStreamCall[Any, Any]:
        return self.smarthttp.PostUploadPack(metadata=self.metadata())

    def post_receive_pack(self) -> grpc.aio.StreamStreamCall[Any, Any]:
        return self.smarthttp.PostReceivePack(metadata=self.metadata())

    async def create_repository(self, relative_path: str, deadline: float) -> None:
        """Create the repository; one that a concurrent push just created is fine."""
        request = repository_pb2.CreateRepositoryRequest(repository=self.repository(relative_path))
        try:
            await self.repositories.CreateRepository(
                request, metadata=self.metadata(), timeout=deadline
            )
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
