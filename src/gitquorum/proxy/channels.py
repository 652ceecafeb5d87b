"""Connections from the proxy to storage nodes, and the metadata each hop carries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from gitquorum import log, tls, tokens
from gitquorum.wire.options import node_channel_options
from gitquorum.wire.replication_claim import CLAIM_KEY
from gitquorum.wire.transaction_metadata import SERVER_KEY, TRANSACTION_KEY

# Client metadata that must not travel to nodes: the proxy sets these itself.
# Never taken from a client: the proxy sets them itself for the node (a client
# replication claim could fence out the real repairs of a replica).
_HOP_KEYS = frozenset({"authorization", TRANSACTION_KEY, SERVER_KEY, "gitaly-servers", CLAIM_KEY})


class NodeChannels:
    """One long-lived channel per node (keyed by storage name)."""

    def __init__(
        self,
        addresses: Mapping[str, str],
        secret: bytes | None = None,
        client_tls: tls.ClientTLS | None = None,
    ) -> None:
        self.addresses = dict(addresses)
        self.secret = secret
        # Set: every node is dialled with TLS (the proxy's node_tls section).
        self.client_tls = client_tls
        self._credentials = client_tls.credentials() if client_tls is not None else None
        self._channels: dict[str, grpc.aio.Channel] = {}

    def url(self, node: str) -> str:
        """The node's address as other nodes dial it (gitaly-servers): tls:// or tcp://."""
        return tls.url(self.addresses[node], self.client_tls is not None)

    def channel(self, node: str) -> grpc.aio.Channel:
        channel = self._channels.get(node)
        if channel is None:
            options = node_channel_options()
            if self._credentials is None:
                channel = grpc.aio.insecure_channel(self.addresses[node], options=options)
            else:
                channel = grpc.aio.secure_channel(
                    self.addresses[node], self._credentials, options=options
                )
            self._channels[node] = channel
        return channel

    def forward_metadata(
        self,
        incoming: Sequence[tuple[str, str | bytes]] | None,
        extra: Sequence[tuple[str, str]] = (),
    ) -> list[tuple[str, str | bytes]]:
        """Client metadata minus hop-specific keys, plus the proxy's own token."""
        out: list[tuple[str, str | bytes]] = [
            (k, v) for k, v in incoming or () if k not in _HOP_KEYS and not k.startswith(":")
        ]
        # A call without a correlation id got one from the proxy for its own log
        # line: pass it on, so the nodes' log lines of the call join the proxy's.
        correlation = log.correlation_id.get()
        if correlation and not any(k in log.CORRELATION_METADATA_KEYS for k, _ in out):
            out.append((log.CORRELATION_METADATA_KEYS[0], correlation))
        out.extend(extra)
        if self.secret:
            out.append(tokens.bearer(self.secret))
        return out

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
