"""Tell systemd how the process is doing: sd_notify without a library.

A unit with ``Type=notify`` passes ``$NOTIFY_SOCKET``, a unix datagram socket;
one datagram of ``KEY=VALUE`` lines is a notification: ``READY=1`` once the
process serves (systemd holds back units ordered after it until then),
``RELOADING=1`` ... ``READY=1`` around a reload, ``STOPPING=1`` when it
drains, and ``WATCHDOG=1`` at least every ``$WATCHDOG_USEC`` when the unit
sets ``WatchdogSec=``: a process whose event loop hangs stops pinging and
systemd restarts it. Without ``$NOTIFY_SOCKET`` (not under systemd, or
another ``Type=``) every call does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

READY = "READY=1"
RELOADING = "RELOADING=1"
STOPPING = "STOPPING=1"
WATCHDOG = "WATCHDOG=1"


def _address(environ: Mapping[str, str]) -> str | None:
    address = environ.get("NOTIFY_SOCKET", "")
    if address.startswith("@"):
        return "\0" + address[1:]  # an abstract socket
    if address.startswith("/"):
        return address
    return None


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state``; False when there is no socket or it cannot be reached."""
    address = _address(os.environ if environ is None else environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        # systemd gone or the socket replaced: serving matters more than telling.
        log.warning("sd_notify %s failed: %s", state.split("=", 1)[0], exc)
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between two pings (half of ``WatchdogSec``), or None without a watchdog."""
    env = os.environ if environ is None else environ
    if _address(env) is None:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None  # meant for another process (e.g. a wrapper that exec'd us)
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


async def watchdog(interval: float) -> None:
    """Ping every ``interval`` seconds from the event loop, until cancelled.

    From the event loop on purpose: a loop that stops turning stops the pings.
    """
    while True:
        notify(WATCHDOG)
        await asyncio.sleep(interval)
