"""What relaying every proxy path costs a workload: relays in a thread, in a child, or none.

``python -m tests.faults.measure_relays [SECONDS]`` starts a
:class:`~tests.faults.cluster.FaultCluster` per mode (``none``: a cluster
without relays), seeds 10 repositories and runs 60 client tasks from this
process's event loop (40 writers creating branches, 20 readers), then prints
per mode: operations per second, the event loop's lag (how late a 10 ms sleep
wakes: what the relays' share of the GIL costs the workload), the relays' CPU
seconds and this process's CPU seconds.
"""

from __future__ import annotations

import asyncio
import collections
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from gitquorum.gitaly import ref_pb2, ref_pb2_grpc
from tests.faults.cluster import FaultCluster
from tests.faults.network import Paths
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.integration.proxy import helpers

ZERO_OID = "0" * 40
REPOS = 10
WRITERS = 40
READERS = 20


class NoPaths(Paths):
    """The ``none`` mode: proxies reach everything directly."""

    def proxy_config(self, cluster, proxy, config):  # type: ignore[no-untyped-def]
        return config


async def _workload(
    cluster: Cluster, repos: list[str], oid: str, seconds: float
) -> dict[str, float]:
    channels = [grpc.aio.insecure_channel(p.address) for p in cluster.proxies]
    stop = time.monotonic() + seconds
    counts = {"writes": 0, "reads": 0, "errors": 0}
    errors: collections.Counter[str] = collections.Counter()
    lags: list[float] = []

    async def writer(i: int) -> None:
        stub = ref_pb2_grpc.RefServiceStub(channels[i % len(channels)])
        n = 0
        while time.monotonic() < stop:
            n += 1
            update = ref_pb2.UpdateReferencesRequest.Update(
                reference=f"refs/heads/w{i}-{n}".encode(),
                old_object_id=ZERO_OID.encode(),
                new_object_id=oid.encode(),
            )
            request = ref_pb2.UpdateReferencesRequest(
                repository=helpers.repository(repos[(i + n) % len(repos)]), updates=[update]
            )

            async def requests(r=request):  # type: ignore[no-untyped-def]
                yield r

            try:
                await stub.UpdateReferences(requests(), timeout=10)
                counts["writes"] += 1
            except grpc.aio.AioRpcError as exc:
                counts["errors"] += 1
                errors[f"{exc.code().name}: {(exc.details() or '')[:60]}"] += 1

    async def reader(i: int) -> None:
        stub = ref_pb2_grpc.RefServiceStub(channels[i % len(channels)])
        n = 0
        while time.monotonic() < stop:
            n += 1
            request = ref_pb2.FindBranchRequest(
                repository=helpers.repository(repos[(i + n) % len(repos)]), name=b"main"
            )
            try:
                await stub.FindBranch(request, timeout=10)
                counts["reads"] += 1
            except grpc.aio.AioRpcError as exc:
                counts["errors"] += 1
                errors[f"{exc.code().name}: {(exc.details() or '')[:60]}"] += 1

    async def monitor() -> None:
        while time.monotonic() < stop:
            started = time.monotonic()
            await asyncio.sleep(0.01)
            lags.append(time.monotonic() - started - 0.01)

    await asyncio.gather(
        *(writer(i) for i in range(WRITERS)), *(reader(i) for i in range(READERS)), monitor()
    )
    for channel in channels:
        await channel.close()
    lags.sort()
    for error, count in errors.most_common(5):
        print(f"  {count} x {error}", flush=True)
    return {
        "writes/s": counts["writes"] / seconds,
        "reads/s": counts["reads"] / seconds,
        "errors": counts["errors"],
        "loop lag p50 ms": 1000 * statistics.median(lags),
        "loop lag p99 ms": 1000 * lags[int(len(lags) * 0.99)],
    }


async def _seed(cluster: Cluster, scratch: Path) -> tuple[list[str], str]:
    source = gitrepo.make_repo(scratch / "source", commits=2)
    repos = [f"measure/{uuid.uuid4().hex}.git" for _ in range(REPOS)]
    async with grpc.aio.insecure_channel(cluster.proxies[0].address) as channel:
        for repo in repos:
            await gitrepo.seed(channel, helpers.repository(repo), source, scratch)
    for repo in repos:
        await asyncio.to_thread(helpers.wait_converged, cluster.proxies[0].address, repo, 3, 60)
    return repos, gitrepo.refs(source)["refs/heads/main"]


def _relayed(paths: Paths) -> float:
    return float(sum(r["forwarded"] for r in paths.stats()["relays"].values()))


def measure(mode: str, seconds: float, base: Path) -> dict[str, float]:
    paths = NoPaths() if mode == "none" else Paths(mode)
    cluster = FaultCluster(base / mode, paths=paths)
    with cluster.start().reporting():
        helpers.wait_all_healthy(cluster)
        repos, oid = asyncio.run(_seed(cluster, base / f"{mode}-scratch"))
        relay_cpu = paths.cpu_seconds()
        relayed = _relayed(paths) if mode != "none" else 0.0
        own = os.times()
        result = asyncio.run(_workload(cluster, repos, oid, seconds))
        own_after = os.times()
        result["relay cpu s"] = paths.cpu_seconds() - relay_cpu
        result["own cpu s"] = (own_after.user + own_after.system) - (own.user + own.system)
        if mode != "none":
            result["relayed MiB"] = (_relayed(paths) - relayed) / (1 << 20)
    return result


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 20.0
    modes = sys.argv[2].split(",") if len(sys.argv) > 2 else ["none", "thread", "process"]
    scratch = tempfile.mkdtemp(prefix="measure-relays-")
    print("logs in", scratch, flush=True)
    for mode in modes:
        result = measure(mode, seconds, Path(scratch))
        print(mode, {k: round(v, 2) for k, v in result.items()}, flush=True)


if __name__ == "__main__":
    main()
