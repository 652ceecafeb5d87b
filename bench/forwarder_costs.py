"""What each duty of a forwarder costs on top of the bare grpc.aio hop.

``proxy_bench.py`` compares the proxy with the bare hop: a grpc.aio server
that relays a unary call's bytes and nothing else. The proxy has duties the
hop has not. This benchmark adds them to the hop one at a time, each variant
its own process in front of one echo server, and reports the CPU per call
of each (interleaved in batches, so drift on the machine hits every variant
alike) and the client's p50:

* ``bare``: the hop as in proxy_bench.py;
* ``metadata``: also reads the caller's metadata, forwards it without the
  pseudo-headers, adds a bearer token and passes the caller's deadline on,
  as any forwarder of a Gitaly client's calls must;
* ``log``: ``metadata`` plus one JSON line per call through
  ``gitquorum.log`` (the proxy's "rpc finished" line, with its fields),
  written on the loop's next turn as the proxy does;
* ``bare-again``: ``bare`` once more: how far two identical processes drift.

    python bench/forwarder_costs.py                # 60 batches of 100 calls each
    python bench/forwarder_costs.py --batches 20   # quicker, noisier

docs/benchmarks.md records results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from bench.common import cpu_seconds, machine_info, machine_table, percentile  # noqa: E402
from bench.proxy_bench import CHANNEL_OPTIONS, serve_generic  # noqa: E402

VARIANTS = ("bare", "metadata", "log", "bare-again")
METHOD = "/gitaly.CommitService/FindCommit"
# What a caller sends: the read policy and a correlation id, as proxy_bench's client.
CLIENT_METADATA = (
    ("gitaly-route-repository-accessor-policy", "primary-only"),
    ("x-gitquorum-correlation-id", "0123456789abcdef0123456789abcdef"),
)
# The size of a v2 bearer token's value.
TOKEN = ("authorization", "Bearer v2." + "a" * 64 + ".1764700000")
LOG_FIELDS = {
    "method": METHOD,
    "op_type": "accessor",
    "virtual_storage": "default",
    "relative_path": "bench/read.git",
    "route": "accessor",
    "node": "node3",
    "policy": "primary-only",
}


async def serve(handler_for: Callable[[], grpc.RpcMethodHandler]) -> None:
    """proxy_bench's server, answering every method with one handler built
    once, in the loop (a grpc.aio channel belongs to the loop it was made in)."""
    handler = handler_for()
    await serve_generic(lambda _method: handler)


def echo() -> grpc.RpcMethodHandler:
    async def unary(request: bytes, context: Any) -> bytes:
        return request

    return grpc.unary_unary_rpc_method_handler(unary)


def forwarder(target: str, variant: str) -> Callable[[], grpc.RpcMethodHandler]:
    def build() -> grpc.RpcMethodHandler:
        relay = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS).unary_unary(METHOD)
        if variant in ("bare", "bare-again"):

            async def bare(request: bytes, context: Any) -> Any:
                return await relay(request)

            return grpc.unary_unary_rpc_method_handler(bare)

        def forwarded(context: Any) -> list[tuple[str, Any]]:
            out = [(k, v) for k, v in context.invocation_metadata() or () if not k.startswith(":")]
            out.append(TOKEN)
            return out

        async def relayed(request: bytes, context: Any) -> Any:
            return await relay(
                request, metadata=forwarded(context), timeout=context.time_remaining()
            )

        if variant == "metadata":
            return grpc.unary_unary_rpc_method_handler(relayed)

        from gitquorum import log

        log.setup("info")
        logger = log.get("gitquorum.rpc")

        async def logged(request: bytes, context: Any) -> Any:
            started = time.perf_counter()
            fields: dict[str, object] = dict(LOG_FIELDS)
            log.correlation_id.set(log.new_correlation_id())
            response = await relayed(request, context)
            fields.update(code="OK", duration_ms=round((time.perf_counter() - started) * 1000, 2))
            asyncio.get_running_loop().call_soon(
                log.emit, logger, logging.INFO, "rpc finished", fields
            )
            return response

        return grpc.unary_unary_rpc_method_handler(logged)

    return build


class Child:
    def __init__(self, args: list[str], stderr: Path) -> None:
        with open(stderr, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=err
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.proc.kill()
            raise RuntimeError(f"{args[0]} did not start (see {stderr})")
        self.address = f"127.0.0.1:{int(line)}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def measure(batches: int, batch: int, workdir: Path) -> dict[str, Any]:
    backend = Child(["--serve", "echo"], workdir / "echo.log")
    hops = {v: Child(["--serve", v, backend.address], workdir / f"{v}.log") for v in VARIANTS}
    try:
        channels = {v: grpc.insecure_channel(h.address) for v, h in hops.items()}
        calls = {v: ch.unary_unary(METHOD) for v, ch in channels.items()}
        payload = b"\n\x0f" + b"x" * 120  # about a FindCommit request's size
        cpu = dict.fromkeys(VARIANTS, 0.0)
        samples: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for call in calls.values():  # warm-up: connections, caches, the log file
            for _ in range(200):
                call(payload, metadata=CLIENT_METADATA, timeout=10)
        for _ in range(batches):
            for variant, call in calls.items():
                pid = hops[variant].proc.pid
                before = cpu_seconds(pid)
                for _ in range(batch):
                    started = time.perf_counter()
                    call(payload, metadata=CLIENT_METADATA, timeout=10)
                    samples[variant].append(time.perf_counter() - started)
                cpu[variant] += cpu_seconds(pid) - before
        for channel in channels.values():
            channel.close()
    finally:
        for hop in hops.values():
            hop.stop()
        backend.stop()
    calls_each = batches * batch
    return {
        "machine": machine_info(),
        "calls_per_variant": calls_each,
        "variants": {
            v: {
                "cpu_us_per_call": round(cpu[v] / calls_each * 1e6, 1),
                "p50_ms": round(percentile(samples[v], 50) * 1000, 3),
            }
            for v in VARIANTS
        },
    }


def render(result: dict[str, Any]) -> str:
    base = result["variants"]["bare"]
    lines = [
        "### Machine",
        "",
        machine_table(result["machine"]),
        "",
        f"### Results ({result['calls_per_variant']} calls per variant)",
        "",
        "| variant | forwarder CPU µs per call | vs bare | client p50 ms | vs bare |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, v in result["variants"].items():
        lines.append(
            f"| {name} | {v['cpu_us_per_call']:.0f} | "
            f"{v['cpu_us_per_call'] - base['cpu_us_per_call']:+.0f} µs | {v['p50_ms']:.3f} | "
            f"{(v['p50_ms'] - base['p50_ms']) * 1000:+.0f} µs |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="JSON instead of markdown")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        role = args.serve[0]
        asyncio.run(serve(echo if role == "echo" else forwarder(args.serve[1], role)))
        return 0
    with tempfile.TemporaryDirectory(prefix="forwarder-costs-") as tmp:
        result = measure(args.batches, args.batch, Path(tmp))
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
