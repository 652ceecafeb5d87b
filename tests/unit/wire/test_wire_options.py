"""gRPC options: one message-size limit, a keepalive policy servers accept."""

from __future__ import annotations

import pytest

from gitquorum.config import LimitsConfig
from gitquorum.wire.options import (
    KEEPALIVE_TIME_MS,
    MAX_MESSAGE_SIZE,
    MIN_PING_INTERVAL_MS,
    message_size_options,
    node_channel_options,
    reconnect_options,
    server_options,
)


def test_one_limit_of_64_mib() -> None:
    assert MAX_MESSAGE_SIZE == 64 * 1024 * 1024
    assert LimitsConfig().max_message_size == MAX_MESSAGE_SIZE


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            message_size_options(),
            {
                "grpc.max_receive_message_length": MAX_MESSAGE_SIZE,
                "grpc.max_send_message_length": MAX_MESSAGE_SIZE,
            },
        ),
        (
            message_size_options(receive=1024),
            {
                "grpc.max_receive_message_length": 1024,
                "grpc.max_send_message_length": MAX_MESSAGE_SIZE,
            },
        ),
        (
            reconnect_options(200, 2_000),
            {"grpc.initial_reconnect_backoff_ms": 200, "grpc.max_reconnect_backoff_ms": 2_000},
        ),
        (
            node_channel_options(),
            {
                "grpc.max_receive_message_length": MAX_MESSAGE_SIZE,
                "grpc.max_send_message_length": MAX_MESSAGE_SIZE,
                "grpc.keepalive_time_ms": 10_000,
                "grpc.keepalive_timeout_ms": 5_000,
                "grpc.initial_reconnect_backoff_ms": 100,
                "grpc.max_reconnect_backoff_ms": 1_000,
                "grpc.use_local_subchannel_pool": 1,
            },
        ),
        (
            server_options(2 * 1024 * 1024),
            {
                "grpc.max_receive_message_length": 2 * 1024 * 1024,
                "grpc.max_send_message_length": MAX_MESSAGE_SIZE,
                "grpc.so_reuseport": 0,
                "grpc.http2.min_recv_ping_interval_without_data_ms": 5_000,
                "grpc.keepalive_permit_without_calls": 1,
                "grpc.http2.max_ping_strikes": 0,
            },
        ),
    ],
)
def test_option_lists(options: list[tuple[str, int | str]], expected: dict[str, int]) -> None:
    assert len({name for name, _ in options}) == len(options)  # no option given twice
    assert dict(options) == expected


def test_servers_accept_the_clients_pings() -> None:
    assert MIN_PING_INTERVAL_MS < KEEPALIVE_TIME_MS
