"""gRPC channel and server options: one message-size limit, one keepalive policy.

Clients (proxies towards nodes, the gateway and the CLI towards proxies) ping
idle connections to find dead peers quickly; servers must accept those pings,
or grpc answers them with GOAWAY "too many pings" and drops calls in flight.
Both halves of that policy are kept here, next to each other.
"""

from __future__ import annotations

# The largest gRPC message sent or received anywhere (a pack chunk, a ref
# advertisement of a repository with many refs). A node's or proxy's limit on
# requests it accepts is configurable (limits.max_message_size) and defaults to it.
MAX_MESSAGE_SIZE = 64 * 1024 * 1024

Options = list[tuple[str, int | str]]

# A client pings an idle connection this often and waits this long for the answer.
KEEPALIVE_TIME_MS = 10_000
KEEPALIVE_TIMEOUT_MS = 5_000
# A server accepts pings this close together: below the clients' interval.
MIN_PING_INTERVAL_MS = 5_000


def message_size_options(receive: int = MAX_MESSAGE_SIZE, send: int = MAX_MESSAGE_SIZE) -> Options:
    return [
        ("grpc.max_receive_message_length", receive),
        ("grpc.max_send_message_length", send),
    ]


def reconnect_options(initial_ms: int, max_ms: int) -> Options:
    """Backoff between reconnection attempts, shorter than grpc's 1 s .. 120 s default."""
    # grpc.min_reconnect_backoff_ms is left alone: it is also the connection
    # attempt timeout.
    return [
        ("grpc.initial_reconnect_backoff_ms", initial_ms),
        ("grpc.max_reconnect_backoff_ms", max_ms),
    ]


def keepalive_options() -> Options:
    """A client's pings on idle connections, which servers here accept."""
    return [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ]


def node_channel_options() -> Options:
    """A proxy's channel to one node: a dead node fails calls quickly instead of queueing them."""
    return [
        *message_size_options(),
        *keepalive_options(),
        *reconnect_options(100, 1_000),
        # Its own connection, not one from grpc's process-wide pool: a channel
        # made to replace one stuck in reconnect backoff (NodeChannels.revive)
        # would otherwise share that connection, and its backoff.
        ("grpc.use_local_subchannel_pool", 1),
    ]


def server_options(max_receive: int = MAX_MESSAGE_SIZE, *, reuse_port: bool = False) -> Options:
    """A node's or proxy's server: a larger request fails RESOURCE_EXHAUSTED.

    ``reuse_port``: several worker processes listen on one address (SO_REUSEPORT).
    Off otherwise, so that a second server started on a taken port fails
    instead of silently sharing its clients.
    """
    return [
        *message_size_options(receive=max_receive),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        # Clients ping every KEEPALIVE_TIME_MS; grpc's default policy would
        # answer that with GOAWAY "too many pings".
        ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_ping_strikes", 0),
    ]
