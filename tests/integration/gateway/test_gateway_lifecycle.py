"""An HTTP gateway whose port is taken fails clearly and closes its backend channel."""

from __future__ import annotations

import asyncio
import re
import socket

import pytest

from gitquorum.gateway.http import GatewayConfig, GatewayServer
from gitquorum.lifecycle import ListenError


async def test_a_start_on_a_taken_port_closes_what_it_opened() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        before = asyncio.all_tasks()
        gateway = GatewayServer(GatewayConfig(proxy="127.0.0.1:1", listen=address))
        with pytest.raises(ListenError, match=re.escape(f"cannot listen on {address}")):
            await gateway.start()
    await asyncio.sleep(0)  # let tasks that were just told to finish run their last step
    assert [t for t in asyncio.all_tasks() if t not in before and not t.done()] == []
    assert gateway.backend._channel is None, "the backend channel outlived the failed start"
    assert gateway._runner is None
