"""The status a server really sent on a client-streaming call.

A server may end such a call before reading every request (a rejected header,
a repository that does not exist). When a request write is in flight at that
moment, grpc.aio replaces the server's status with INTERNAL "Internal error
from Core" (grpc/grpc#36066), before or after the real status arrives. The
proxy (towards the nodes) and the HTTP gateway (towards the proxy) both stream
requests, so both relay the server's own answer instead of the write race.
"""

from __future__ import annotations

import asyncio
import contextlib

import grpc

# What grpc.aio reports when a request write fails because the call just ended.
_WRITE_RACE = (grpc.StatusCode.INTERNAL, "Internal error from Core")
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class StatusWatch:
    """Records every status given to one call, so that a write race can be
    resolved into the server's own answer (done callbacks run on each)."""

    def __init__(self, call: grpc.aio.Call) -> None:
        self.statuses: list[tuple[grpc.StatusCode, str]] = []
        self._answered = asyncio.Event()
        call.add_done_callback(self._on_status)

    def _on_status(self, call: grpc.aio.Call) -> None:
        status = getattr(getattr(call, "_cython_call", None), "_status", None)
        if status is None:
            return
        entry = (_CODES.get(status.code(), grpc.StatusCode.UNKNOWN), status.details() or "")
        self.statuses.append(entry)
        if entry != _WRITE_RACE:
            self._answered.set()

    async def resolve(self, code: grpc.StatusCode, details: str) -> tuple[grpc.StatusCode, str]:
        """The server's status in place of a write race; anything else unchanged."""
        if (code, details) != _WRITE_RACE:
            return code, details
        with contextlib.suppress(TimeoutError):
            # The server's status may still be on its way: wait a little for it.
            await asyncio.wait_for(self._answered.wait(), 1.0)
        for entry in self.statuses:
            if entry != _WRITE_RACE:
                return entry
        return code, details
