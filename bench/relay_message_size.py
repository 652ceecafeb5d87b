"""What one Python gRPC hop costs to relay a clone, by response message size.

A stand-in node streams the same number of bytes as a whole clone (54.5 MB by
default) as raw messages of a fixed size; the bare grpc.aio hop of
``proxy_bench.py --serve-hop`` relays them to a grpc.aio client here. For each
size the report gives the wall time and the CPU of the sender, the hop and the
client: the per-message part of a relay's cost, which every hop of a clone
(node, proxy, git-ssh or the HTTP gateway) pays once per message.

    python bench/relay_message_size.py                 # 16 KiB to 1 MiB, 2 rounds
    python bench/relay_message_size.py --sizes 64,256  # KiB
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from bench.common import cpu_seconds, markdown_table  # noqa: E402
from bench.proxy_bench import serve_generic  # noqa: E402
from gitquorum.wire.options import message_size_options  # noqa: E402

OPTIONS = message_size_options()
# The hop relays SSHService methods as streams: borrow the name.
METHOD = "/gitaly.SSHService/SSHUploadPack"


def serve(total: int) -> None:
    """Answer each call with ``total`` bytes in messages of the size the client asks for."""

    async def main() -> None:
        async def stream(requests: Any, context: Any) -> AsyncIterator[bytes]:
            size = int(await anext(aiter(requests)))
            message = os.urandom(size)
            for _ in range(total // size):
                yield message

        handler = grpc.stream_stream_rpc_method_handler(stream)
        await serve_generic(lambda _method: handler)

    asyncio.run(main())


async def relay(address: str, size: int) -> int:
    async with grpc.aio.insecure_channel(address, options=OPTIONS) as channel:
        call = channel.stream_stream(METHOD)

        async def requests() -> AsyncIterator[bytes]:
            yield str(size).encode()

        received = 0
        async for message in call(requests()):
            received += len(message)
        return received


def _child(argv: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="16,64,256,1024", help="message sizes in KiB")
    parser.add_argument("--mb", type=float, default=54.5, help="bytes per relayed clone, MB")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    total = int(args.mb * 1e6)
    sender, port = _child([__file__, "--serve", str(total)])
    hop, hop_port = _child(
        [str(ROOT / "bench" / "proxy_bench.py"), "--serve-hop", f"127.0.0.1:{port}"]
    )
    rows = []
    try:
        for rnd in range(args.rounds):
            for kib in (int(k) for k in args.sizes.split(",")):
                pids = {"sender": sender.pid, "hop": hop.pid}
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                mine = time.process_time()
                started = time.perf_counter()
                received = asyncio.run(relay(f"127.0.0.1:{hop_port}", kib * 1024))
                seconds = time.perf_counter() - started
                used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
                rows.append(
                    (
                        rnd + 1,
                        kib,
                        received // (kib * 1024),
                        f"{received / 1e6:.1f}",
                        f"{seconds:.2f}",
                        f"{1e3 * used['sender']:.0f}",
                        f"{1e3 * used['hop']:.0f}",
                        f"{1e3 * (time.process_time() - mine):.0f}",
                        f"{os.getloadavg()[0]:.2f}",
                    )
                )
    finally:
        for proc in (hop, sender):
            proc.kill()
            proc.wait(10)
    headers = (
        "round",
        "message KiB",
        "messages",
        "MB",
        "seconds",
        "sender CPU ms",
        "bare hop CPU ms",
        "client CPU ms",
        "load average",
    )
    print(markdown_table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
