"""How a proxy's throughput scales with its worker processes (``workers``).

Starts a real cluster (one etcd member, three storage nodes, one proxy: the
launcher behind ``gitquorum up``, without its HTTP gateway) once per
configuration, and measures FindCommit calls/s at high concurrency through
the proxy with 1 worker and with 2, the read spread over the three
up-to-date replicas so that no single node is the bottleneck.

Cores are assigned with ``taskset``: the proxy (its parent and every worker,
all threads: ``taskset -a -p``) gets ``--proxy-cpus``; everything else (etcd,
the nodes and their git processes, the load clients) gets ``--rest-cpus``.
The load comes from ``--clients`` processes, each with its own connections
(the kernel spreads connections, not calls, over the workers).

Each configuration also reads the CPU time of the proxy's processes and the
nodes' from /proc: the proxy's CPU per call says whether workers add work per
call, and the proxy's CPU use (in cores) whether it was the bottleneck.

    python bench/workers_bench.py                       # cores split as the machine allows
    python bench/workers_bench.py --proxy-cpus 0-1 --rest-cpus 2-7
    python bench/workers_bench.py --quick               # smoke run (< 2 min)
    python bench/workers_bench.py --json

Progress goes to stderr; docs/benchmarks.md records results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc

from bench.common import (
    build_small_repo,
    cpu_seconds,
    machine_info,
    machine_table,
    make_bundle,
    markdown_table,
    percentile,
    ratio,
)
from gitquorum.gitaly import (
    commit_pb2,
    commit_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
)
from gitquorum.launch.proxy_config import VIRTUAL_STORAGE
from gitquorum.localcluster import LocalCluster
from gitquorum.localcluster import Settings as ClusterSettings

RELATIVE_PATH = "bench/workers.git"
TARGET = 1.7


@dataclass(frozen=True)
class Placement:
    name: str
    proxy: frozenset[int]
    rest: frozenset[int]


def parse_cpus(text: str) -> frozenset[int]:
    """``0-1,4`` -> {0, 1, 4}."""
    cpus: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return frozenset(cpus)


def cpu_list(cpus: frozenset[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def default_placements(cpus: frozenset[int]) -> list[Placement]:
    """The proxy on half the cores (2 at least), the rest on the others.

    With 2 cores, no split gives a 2-worker proxy two cores of its own and
    still leaves the nodes and the load a core: the proxy is pinned to one core
    (what workers cost when they share it), and a second run shares both
    cores among everything (what the whole machine gives).
    """
    ordered = sorted(cpus)
    if len(ordered) >= 4:
        half = max(2, len(ordered) // 2)
        return [Placement("split", frozenset(ordered[:half]), frozenset(ordered[half:]))]
    if len(ordered) == 2:
        return [
            Placement("proxy on 1 core", frozenset(ordered[:1]), frozenset(ordered[1:])),
            Placement("all share 2 cores", frozenset(ordered), frozenset(ordered)),
        ]
    return [Placement("all share", frozenset(ordered), frozenset(ordered))]


# -- the load client (a separate process: ``--load``) -----------------------------------


async def _load(address: str, concurrency: int, channels: int, seconds: float) -> dict[str, Any]:
    opened = [
        # Each channel its own connection: grpc would otherwise share one per process.
        grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    repository = shared_pb2.Repository(storage_name=VIRTUAL_STORAGE, relative_path=RELATIVE_PATH)
    request = commit_pb2.FindCommitRequest(repository=repository, revision=b"main")
    stubs = [commit_pb2_grpc.CommitServiceStub(channel) for channel in opened]
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def loop(stub: commit_pb2_grpc.CommitServiceStub) -> None:
        nonlocal errors
        while (started := time.perf_counter()) < deadline:
            try:
                await stub.FindCommit(request, timeout=10)
            except grpc.aio.AioRpcError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - started)

    try:
        await asyncio.gather(*(loop(stubs[i % channels]) for i in range(concurrency)))
    finally:
        await asyncio.gather(*(channel.close() for channel in opened))
    return {
        "calls": len(latencies),
        "errors": errors,
        # A sample keeps the output small; percentiles are taken over all clients' samples.
        "sample_ms": [round(s * 1000, 3) for s in latencies[:: max(1, len(latencies) // 2000)]],
    }


def run_load(args: argparse.Namespace) -> int:
    result = asyncio.run(_load(args.load, args.concurrency, args.channels, args.seconds))
    print(json.dumps(result))
    return 0


# -- one configuration ------------------------------------------------------------------


def _progress(message: str) -> None:
    print(f"[workers_bench] {message}", file=sys.stderr, flush=True)


def _proxy_pids(cluster: LocalCluster, workers: int) -> list[int]:
    proxy = cluster.proxies[0]
    assert proxy.proc is not None
    pids = [proxy.proc.pid]
    if workers > 1:
        for index in range(workers):
            ready = cluster.run_dir / f"{proxy.name}.ready.worker{index}"
            pids.append(int(ready.read_text().split()[3]))
    return pids


def _pin(pids: Sequence[int], cpus: frozenset[int]) -> None:
    for pid in pids:
        subprocess.run(
            ["taskset", "-a", "-p", "-c", cpu_list(cpus), str(pid)],
            check=True,
            capture_output=True,
        )


def _seed(address: str, work: Path) -> None:
    source = work / "source"
    build_small_repo(source)
    bundle = make_bundle(source, work / "source.bundle")
    repository = shared_pb2.Repository(storage_name=VIRTUAL_STORAGE, relative_path=RELATIVE_PATH)
    with grpc.insecure_channel(address) as channel:
        stub = repository_pb2_grpc.RepositoryServiceStub(channel)
        stub.CreateRepositoryFromBundle(
            iter(
                [
                    repository_pb2.CreateRepositoryFromBundleRequest(
                        repository=repository, data=bundle
                    )
                ]
            ),
            timeout=120,
        )
        commits = commit_pb2_grpc.CommitServiceStub(channel)
        found = commits.FindCommit(
            commit_pb2.FindCommitRequest(repository=repository, revision=b"main"), timeout=10
        )
        assert found.commit.id, "FindCommit found no main branch after seeding"


def _clients(address: str, settings: Settings, seconds: float) -> list[dict[str, Any]]:
    per_client = max(1, settings.concurrency // settings.clients)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--load",
                address,
                "--concurrency",
                str(per_client),
                "--channels",
                str(settings.channels),
                "--seconds",
                str(seconds),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(settings.clients)
    ]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"load client exited with {proc.returncode}")
        results.append(json.loads(out))
    return results


@dataclass(frozen=True)
class Settings:
    seconds: float = 20.0
    warmup: float = 3.0
    concurrency: int = 64
    clients: int = 2
    channels: int = 8
    rounds: int = 2

    @classmethod
    def quick(cls) -> Settings:
        return cls(seconds=5.0, warmup=1.0, rounds=1)


def measure(workers: int, placement: Placement, settings: Settings) -> dict[str, Any]:
    """One configuration on a fresh cluster: calls/s, latency, CPU of the proxy and nodes."""
    os.sched_setaffinity(0, placement.rest)  # etcd, nodes and clients inherit it
    cluster = LocalCluster(
        ClusterSettings(nodes=3, proxies=1, http=False, proxy_settings={"workers": workers})
    )
    try:
        cluster.start()
        proxy_pids = _proxy_pids(cluster, workers)
        _pin(proxy_pids, placement.proxy)
        address = cluster.proxies[0].address
        with tempfile.TemporaryDirectory(prefix="workers-bench-") as work:
            _seed(address, Path(work))
        _clients(address, settings, settings.warmup)
        node_pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
        rounds = []
        for _ in range(settings.rounds):
            proxy_cpu = sum(cpu_seconds(pid) for pid in proxy_pids)
            node_cpu = sum(cpu_seconds(pid, children=True) for pid in node_pids)
            started = time.perf_counter()
            results = _clients(address, settings, settings.seconds)
            wall = time.perf_counter() - started
            proxy_cpu = sum(cpu_seconds(pid) for pid in proxy_pids) - proxy_cpu
            node_cpu = sum(cpu_seconds(pid, children=True) for pid in node_pids) - node_cpu
            calls = sum(r["calls"] for r in results)
            samples = [ms for r in results for ms in r["sample_ms"]]
            rounds.append(
                {
                    "calls_per_s": round(calls / settings.seconds, 1),
                    "errors": sum(r["errors"] for r in results),
                    "p50_ms": round(percentile(samples, 50), 2),
                    "p99_ms": round(percentile(samples, 99), 2),
                    "proxy_cores": round(proxy_cpu / wall, 2),
                    "proxy_cpu_us_per_call": round(proxy_cpu / calls * 1e6) if calls else None,
                    "node_cores": round(node_cpu / wall, 2),
                    "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                }
            )
        best = max(rounds, key=lambda r: r["calls_per_s"])
        return {"workers": workers, "placement": placement.name, "best": best, "rounds": rounds}
    finally:
        cluster.close()


# -- report -----------------------------------------------------------------------------


def report(info: dict[str, Any], placements: list[Placement], results: list[dict[str, Any]]) -> str:
    rows = []
    for placement in placements:
        mine = [r for r in results if r["placement"] == placement.name]
        one = next(r for r in mine if r["workers"] == 1)
        for r in mine:
            b = r["best"]
            rows.append(
                (
                    placement.name,
                    f"proxy {cpu_list(placement.proxy)} / rest {cpu_list(placement.rest)}",
                    r["workers"],
                    b["calls_per_s"],
                    f"{ratio(b['calls_per_s'], one['best']['calls_per_s'])}x",
                    b["p50_ms"],
                    b["p99_ms"],
                    b["proxy_cores"],
                    b["proxy_cpu_us_per_call"],
                    b["node_cores"],
                    b["errors"],
                    b["loadavg"],
                )
            )
    table = markdown_table(
        (
            "placement",
            "cpus",
            "workers",
            "FindCommit calls/s",
            "vs 1 worker",
            "p50 ms",
            "p99 ms",
            "proxy cores used",
            "proxy CPU µs/call",
            "nodes' cores used",
            "errors",
            "load avg after",
        ),
        rows,
    )
    return f"{machine_table(info)}\n\n{table}\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]) if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--proxy-cpus", help="cores of the proxy, e.g. 0-1")
    parser.add_argument("--rest-cpus", help="cores of everything else, e.g. 2-7")
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument("--json", action="store_true", help="JSON instead of markdown")
    parser.add_argument("--seconds", type=float, help="length of each measured round")
    parser.add_argument("--concurrency", type=int, help="calls in flight, all clients together")
    # The load client's own arguments (this file runs itself as the client).
    parser.add_argument("--load", help=argparse.SUPPRESS)
    parser.add_argument("--channels", type=int, default=8, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if (args.proxy_cpus is None) != (args.rest_cpus is None):
        parser.error("--proxy-cpus and --rest-cpus go together")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.load:
        return run_load(args)
    settings = Settings.quick() if args.quick else Settings()
    overrides = {
        k: v for k, v in (("seconds", args.seconds), ("concurrency", args.concurrency)) if v
    }
    settings = Settings(**{**settings.__dict__, **overrides})
    if args.proxy_cpus is not None:
        placements = [Placement("given", parse_cpus(args.proxy_cpus), parse_cpus(args.rest_cpus))]
    else:
        placements = default_placements(frozenset(os.sched_getaffinity(0)))
    info = machine_info()
    results = []
    for placement in placements:
        for workers in (1, 2):
            _progress(f"{placement.name}: {workers} worker(s)")
            results.append(measure(workers, placement, settings))
            _progress(json.dumps(results[-1]["best"]))
    if args.json:
        print(json.dumps({"machine": info, "settings": settings.__dict__, "results": results}))
    else:
        print(report(info, placements, results))
        print(f"settings: {json.dumps(settings.__dict__)}; target ≥ {TARGET}x with 2 workers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
