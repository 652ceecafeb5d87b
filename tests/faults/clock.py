"""Clock skew on one proxy: the proxy restarted under libfaketime.

Proxies write wall-clock times that other proxies read (a replication job's
``not_before``, a verification stamp, a write hold's deadline, a history
entry's key); docs/reliability.md ("Clock skew") lists each and what a skew
does to it. This nemesis restarts one proxy (``run.rng`` picks it, unless
given) with its wall clock ``skew`` seconds off (drawn from ``SKEWS`` unless
given) and heals by restarting it on the real clock.

libfaketime (Debian's ``libfaketime``) is preloaded with a relative offset
(``FAKETIME="+600"``). By default it shifts ``CLOCK_MONOTONIC`` too (to the
faked wall time: a constant jump at start, then the normal rate);
``FAKETIME_DONT_FAKE_MONOTONIC=1`` keeps the monotonic clock real, as on a
host whose wall clock is off, and is what this nemesis sets. gRPC and the
etcd client work under it (``tests/faults/test_clock_skew.py``).
"""

from __future__ import annotations

import asyncio
import glob
import os
import time
import urllib.request
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, ClassVar

from tests.faults.base import Fault, Nemesis

if TYPE_CHECKING:
    from tests.faults.context import RunContext
    from tests.harness.cluster import ProxyProcess

# Ten minutes either way: far beyond NTP's error and the 60 s a stale write
# hold used to be judged by, well within what a host without NTP drifts to.
SKEWS = (600, -600)
# The multi-threaded variant: gRPC calls the clock from its own threads.
_LIBRARY_GLOB = "/usr/lib/*/faketime/libfaketimeMT.so.1"


def faketime_library() -> str | None:
    """Path of libfaketime's preload library, None when it is not installed."""
    found = sorted(glob.glob(_LIBRARY_GLOB))
    return found[0] if found else None


def skewed_environment(skew: int, library: str) -> dict[str, str]:
    """The caller's environment with the wall clock ``skew`` seconds off."""
    preload = " ".join(p for p in (library, os.environ.get("LD_PRELOAD", "")) if p)
    return {
        **os.environ,
        "LD_PRELOAD": preload,
        "FAKETIME": f"{skew:+d}",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def restart(proxy: ProxyProcess, env: dict[str, str] | None) -> None:
    """Kill ``proxy`` and start it again with ``env`` (None: the caller's)."""
    proxy.kill()
    proxy.env = env
    # As the kill-proxy heals allow: a pooled proxy on saturated cores starts
    # its interpreters one after another (20-30 s seen for a pooled node).
    proxy.start(60)


def clock_offset(proxy: ProxyProcess) -> float:
    """The proxy's wall clock minus this process's, from its metrics listener's
    HTTP ``Date`` header (1 s resolution)."""
    sent = time.time()
    url = f"http://127.0.0.1:{proxy.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        header = response.headers["Date"]
    received = time.time()
    return parsedate_to_datetime(header).timestamp() - (sent + received) / 2


# A client's channel to a restarted proxy reconnects within its longest
# reconnect backoff (tests/chaos/workload.py: 1 s, with 20 % jitter), plus
# room for the connection itself on a loaded machine.
CLIENT_RECONNECT = 2.5


class ClockSkew(Nemesis):
    name: ClassVar[str] = "clock-skew"
    kind: ClassVar[str] = "clock"
    # The restarts take the proxy away for a moment: its clients' failed reads
    # then are their path, not the cluster's availability (``proxies_down``,
    # only while it restarts: ``proxies_down_during``). While it runs skewed
    # its reads must succeed.
    reads_available: ClassVar[bool] = True

    def __init__(self, skew: int | None = None, proxy: str | None = None) -> None:
        self.skew = skew
        self.target = proxy
        self._skewed: str | None = None
        self._fault: Fault | None = None

    def applicable(self, run: RunContext) -> bool:
        return faketime_library() is not None and len(run.cluster.proxies) >= 2

    async def inject(self, run: RunContext) -> Fault:
        library = faketime_library()
        assert library is not None, "libfaketime is not installed (apt install libfaketime)"
        name = self.target or run.rng.choice(sorted(p.name for p in run.live_proxies()))
        skew = self.skew if self.skew is not None else run.rng.choice(SKEWS)
        proxy = run.proxy(name)
        fault = run.fault(self, name, detail=f"wall clock {skew:+d}s", proxies_down=(name,))
        down = time.monotonic()
        await asyncio.to_thread(restart, proxy, skewed_environment(skew, library))
        fault.proxies_down_during.append((down, time.monotonic() + CLIENT_RECONNECT))
        self._skewed, self._fault = name, fault
        run.note(f"{name} restarted with its wall clock {skew:+d}s off")
        return fault

    async def heal(self, run: RunContext) -> None:
        if self._skewed is None:
            return
        proxy = run.proxy(self._skewed)
        down = time.monotonic()
        await asyncio.to_thread(restart, proxy, None)
        if self._fault is not None:
            self._fault.proxies_down_during.append((down, time.monotonic() + CLIENT_RECONNECT))
        run.note(f"{self._skewed} restarted on the real clock")
        self._skewed, self._fault = None, None


NEMESES: list[type[Nemesis]] = [ClockSkew]
