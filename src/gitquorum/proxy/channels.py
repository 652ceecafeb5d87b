"""Connections from the proxy to storage nodes, and the metadata each hop carries."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Callable, Mapping, Sequence

import grpc

from gitquorum import log, tls, tokens
from gitquorum.cluster.health import TRIGGER_CONNECTION_LOST, TRIGGER_RPC_FAILED, watch_connection
from gitquorum.wire.options import node_channel_options
from gitquorum.wire.replication_claim import CLAIM_KEY
from gitquorum.wire.transaction_metadata import SERVER_KEY, TRANSACTION_KEY

# Client metadata that must not travel to nodes: the proxy sets these itself.
# Never taken from a client: the proxy sets them itself for the node (a client
# replication claim could fence out the real repairs of a replica).
_HOP_KEYS = frozenset({"authorization", TRANSACTION_KEY, SERVER_KEY, "gitaly-servers", CLAIM_KEY})


# (node, trigger): a node whose connection failed, to be checked at once.
Unreachable = Callable[[str, str], None]


class Reach(enum.Enum):
    """What connecting to a node's channel showed (``NodeChannels.connect``)."""

    CONNECTED = "connected"
    REFUSED = "refused"  # the connection attempt failed: nothing can have been sent
    UNDECIDED = "undecided"  # still connecting when the wait ended (a hung node)


# Connectivity states in which a connection attempt has decided.
_SETTLED = frozenset(
    {
        grpc.ChannelConnectivity.READY,
        grpc.ChannelConnectivity.TRANSIENT_FAILURE,
        grpc.ChannelConnectivity.SHUTDOWN,
    }
)
# States in which waiting for a connection ends: connected, or closed for good.
_CONNECTED = frozenset({grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.SHUTDOWN})

# A channel replaced by ``revive`` still carries the calls begun on it (a
# stream a draining node still serves on its old connection, a call begun in
# the same loop turn, a verification holding its stub): it stays open this
# long for new calls of those holding it, then closes with the grace after it
# for the calls still running (a long clone), then cancels what is left. One
# per node at most: retiring another closes the one before (with the grace),
# so a flapping node does not gather channels that all reconnect to it.
RETIRED_OPEN = 10.0
RETIRED_GRACE = 600.0


class NodeChannels:
    """One long-lived channel per node (keyed by storage name).

    Each channel's connection is watched: when it drops, or a call could not
    reach the node, ``on_unreachable`` (the health checker's ``suspect``) is
    told, and the node is checked at once instead of at the next interval.
    """

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
        self._watches: dict[str, asyncio.Task[None]] = {}
        # The channel ``revive`` last replaced, per node, with the task that
        # closes it when its time is up.
        self._retired: dict[str, tuple[asyncio.Task[None], grpc.aio.Channel]] = {}
        # Retired channels closing with their grace (another one was retired).
        self._closing: dict[asyncio.Task[None], grpc.aio.Channel] = {}
        # Set when a node's channel is replaced, then made anew: wakes those
        # waiting on the channel it replaced.
        self._replaced: dict[str, asyncio.Event] = {}
        self._closed = False
        self._nodes_by_address: dict[str, str] = {}
        self._unary: dict[tuple[str, str], grpc.aio.UnaryUnaryMultiCallable] = {}
        self.on_unreachable: Unreachable | None = None

    def unreachable(self, node: str, trigger: str = TRIGGER_RPC_FAILED) -> None:
        """A call could not reach ``node``: have it checked now."""
        if self.on_unreachable is not None:
            self.on_unreachable(node, trigger)

    def _connection_lost(self, address: str) -> None:
        node = self._nodes_by_address.get(address)
        if node is not None:
            self.unreachable(node, TRIGGER_CONNECTION_LOST)

    async def connect(self, node: str, timeout: float) -> Reach:
        """Connect the node's channel (a no-op when it is connected already).

        REFUSED means the channel's connection attempt failed, so a call made
        now would be failed by grpc before anything of it is sent. A channel
        replaced while we wait (``revive``) is followed: the answer is about
        the node's current channel.
        """
        deadline = asyncio.get_running_loop().time() + max(0.0, timeout)
        state = await self._wait(node, deadline, _SETTLED)
        if state is grpc.ChannelConnectivity.READY:
            return Reach.CONNECTED
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            return Reach.REFUSED
        return Reach.UNDECIDED

    async def wait_connected(self, node: str, timeout: float) -> bool:
        """Whether the node's channel, followed across ``revive``, is connected
        within ``timeout`` (a refused channel keeps retrying meanwhile)."""
        deadline = asyncio.get_running_loop().time() + max(0.0, timeout)
        return await self._wait(node, deadline, _CONNECTED) is grpc.ChannelConnectivity.READY

    async def _wait(
        self, node: str, deadline: float, until: frozenset[grpc.ChannelConnectivity]
    ) -> grpc.ChannelConnectivity:
        """The state of the node's current channel once it is in ``until`` (or
        at the deadline). Woken by the channel's state changes and by its
        replacement, so a waiter never decides on a channel already retired."""
        channel = self.channel(node)
        state = channel.get_state(try_to_connect=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                while True:
                    current = self._channels.get(node)
                    if current is not None and current is not channel:
                        channel = current
                        state = channel.get_state(try_to_connect=True)
                        continue
                    if state in until:
                        return state
                    replaced = asyncio.ensure_future(self._replacement(node).wait())
                    changed = asyncio.ensure_future(channel.wait_for_state_change(state))
                    try:
                        await asyncio.wait({replaced, changed}, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        replaced.cancel()
                        changed.cancel()
                        await asyncio.gather(replaced, changed, return_exceptions=True)
                    if self._channels.get(node, channel) is not channel:
                        continue  # retired: not asked to connect again
                    state = channel.get_state(try_to_connect=True)
        return state

    def _replacement(self, node: str) -> asyncio.Event:
        event = self._replaced.get(node)
        if event is None:
            event = self._replaced[node] = asyncio.Event()
        return event

    def revive(self, node: str) -> bool:
        """The node answered a health check: a channel of ours that is still
        waiting out its reconnect backoff is replaced by one that connects now.

        grpc fails every call on a channel in TRANSIENT_FAILURE at once, until
        its backoff (up to ``reconnect_options``' maximum) ends, even after the
        node came back; the health checker's own channel reconnects sooner, so
        without this a node seen healthy again failed the first calls routed
        to it ("failed to connect to all addresses", seen after a restart).
        The replaced channel is retired, not closed: calls may still run on it
        (``RETIRED_OPEN``). Whether the channel was replaced.
        """
        channel = self._channels.get(node)
        if (
            self._closed
            or channel is None
            or channel.get_state() is not grpc.ChannelConnectivity.TRANSIENT_FAILURE
        ):
            return False
        del self._channels[node]
        for key in [key for key in self._unary if key[0] == node]:
            del self._unary[key]
        watch = self._watches.pop(node, None)
        if watch is not None:
            watch.cancel()
        loop = asyncio.get_running_loop()
        earlier = self._retired.pop(node, None)
        if earlier is not None:
            task, old = earlier
            task.cancel()
            closing = loop.create_task(old.close(grace=RETIRED_GRACE))
            self._closing[closing] = old
            closing.add_done_callback(lambda done: self._closing.pop(done, None))
        self._retired[node] = (loop.create_task(_retire(channel)), channel)
        self.channel(node).get_state(try_to_connect=True)
        event = self._replaced.pop(node, None)
        if event is not None:
            event.set()
        return True

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
            self._nodes_by_address[self.addresses[node]] = node
            with contextlib.suppress(RuntimeError):  # no running loop: nothing to watch with
                self._watches[node] = asyncio.get_running_loop().create_task(
                    watch_connection(channel, self.addresses[node], self._connection_lost)
                )
        return channel

    def unary_unary(self, node: str, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
        """The node's callable for one unary method, made once: grpc builds a new
        one (and looks up its plugins) on every ``channel.unary_unary``."""
        key = (node, method)
        callable_ = self._unary.get(key)
        if callable_ is None:
            callable_ = self._unary[key] = self.channel(node).unary_unary(method)
        return callable_

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
        self._closed = True  # no channel is replaced from now on
        watches, self._watches = list(self._watches.values()), {}
        retired = [*self._retired.values(), *((task, ch) for task, ch in self._closing.items())]
        self._retired, self._closing = {}, {}
        tasks = [*watches, *(task for task, _ in retired)]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._unary.clear()
        channels = [*self._channels.values(), *(channel for _, channel in retired)]
        self._channels = {}
        for channel in channels:
            await channel.close()


async def _retire(channel: grpc.aio.Channel) -> None:
    """Close a replaced channel once those who hold it are done with it."""
    await asyncio.sleep(RETIRED_OPEN)
    await channel.close(grace=RETIRED_GRACE)
