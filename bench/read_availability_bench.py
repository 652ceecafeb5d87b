"""What readers see when a replica stalls or dies, in one run, with the proxies' defaults.

Readers (``--readers`` concurrent loops of FindCommit then RefExists, each
with a 5 s deadline, through one proxy) read one repository with three
up-to-date replicas while, in order:

* **normal**: nothing happens for ``--normal`` seconds: read p99, and the
  share of reads the proxy hedged (``gitquorum_read_hedges_total{result="sent"}``
  over the accessor RPCs it served in that window): the extra load hedging adds;
* **stall**: a secondary is stopped with SIGSTOP for ``--stall`` seconds
  (6 s): failed reads, and read p99 of the reads started during the stall
  against the normal p99. Goal: 0 failed, p99 during <= max(3 x before, 250 ms);
* **kill**: once the stalled node is back and healthy, the primary is killed
  with SIGKILL, then ``--gap`` seconds later a secondary: failed reads (goal 0).

The cluster is ``gitquorum up``'s launcher (etcd, three nodes, one proxy,
separate processes on loopback) with the proxies' documented defaults
(health checks every 1 s with a 1 s timeout, see failover_bench.DEFAULTS).

Usage::

    python bench/read_availability_bench.py [--readers 4] [--normal 20] [--stall 6]
        [--gap 4] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

import grpc  # noqa: E402

from bench.common import (  # noqa: E402
    Latency,
    build_small_repo,
    machine_info,
    machine_table,
    markdown_table,
    ref_tips,
)
from bench.failover_bench import (  # noqa: E402
    DEFAULTS,
    create_repository,
    metadata,
    repository,
    until,
    up_to_date,
)
from gitquorum.gitaly import commit_pb2, commit_pb2_grpc, ref_pb2, ref_pb2_grpc  # noqa: E402
from gitquorum.localcluster import LocalCluster, Settings  # noqa: E402

READ_DEADLINE = 5.0
RELATIVE_PATH = "bench/read-availability.git"


@dataclass
class Read:
    started: float
    seconds: float
    error: str = ""


@dataclass
class Readers:
    address: str
    head: str
    reads: list[Read] = field(default_factory=list)
    stopping: bool = False

    async def loop(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            commits = commit_pb2_grpc.CommitServiceStub(channel)
            refs = ref_pb2_grpc.RefServiceStub(channel)
            repo = repository(RELATIVE_PATH)
            find = commit_pb2.FindCommitRequest(repository=repo, revision=b"main")
            exists = ref_pb2.RefExistsRequest(repository=repo, ref=b"refs/heads/main")
            while not self.stopping:
                for call in (
                    lambda: commits.FindCommit(find, timeout=READ_DEADLINE),
                    lambda: refs.RefExists(exists, timeout=READ_DEADLINE),
                ):
                    started = time.monotonic()
                    error = ""
                    try:
                        answer = await call()
                        if isinstance(answer, commit_pb2.FindCommitResponse) and (
                            answer.commit.id != self.head
                        ):
                            error = "wrong commit"
                    except grpc.aio.AioRpcError as exc:
                        error = exc.code().name
                    self.reads.append(Read(started, time.monotonic() - started, error))

    def window(self, start: float, end: float) -> list[Read]:
        return [r for r in self.reads if start <= r.started < end]


def proxy_counters(cluster: LocalCluster) -> dict[str, float]:
    """The proxy's read counters: accessor RPCs served, retries, hedges, ejections."""
    url = cluster.metrics_url(cluster.proxies[0])
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    counters = {"accessors": 0.0, "retries": 0.0, "hedges_sent": 0.0, "hedges_won": 0.0}
    counters["ejections"] = 0.0
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        if name.startswith("gitquorum_rpc_requests_total{") and 'op_type="accessor"' in name:
            counters["accessors"] += float(value)
        elif name == "gitquorum_read_retries_total":
            counters["retries"] += float(value)
        elif name == 'gitquorum_read_hedges_total{result="sent"}':
            counters["hedges_sent"] += float(value)
        elif name == 'gitquorum_read_hedges_total{result="won"}':
            counters["hedges_won"] += float(value)
        elif name.startswith("gitquorum_node_ejections_total{"):
            counters["ejections"] += float(value)
    return counters


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


def summary(reads: list[Read]) -> dict[str, Any]:
    failed = [r for r in reads if r.error]
    return {
        "reads": len(reads),
        "failed": len(failed),
        "errors": sorted({r.error for r in failed}),
        "latency": Latency.of([r.seconds for r in reads]).as_dict(),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="read-availability-bench-"))
    source = base / "source"
    build_small_repo(source, commits=3)
    results: dict[str, Any] = {"machine": machine_info(), "settings": DEFAULTS}
    cluster = LocalCluster(
        Settings(nodes=3, proxies=1, http=False, proxy_settings=DEFAULTS), base / "cluster"
    )
    cluster.start(timeout=120)
    try:
        await create_repository(cluster, RELATIVE_PATH, source, base)
        address = cluster.proxies[0].address
        readers = Readers(address, ref_tips(source)["refs/heads/main"])
        tasks = [asyncio.create_task(readers.loop()) for _ in range(args.readers)]
        await asyncio.sleep(args.warmup)

        print("normal", flush=True)
        counters = await asyncio.to_thread(proxy_counters, cluster)
        normal_from = time.monotonic()
        await asyncio.sleep(args.normal)
        normal_to = time.monotonic()
        normal_counters = delta(await asyncio.to_thread(proxy_counters, cluster), counters)

        print("stall", flush=True)
        primary = metadata(address, RELATIVE_PATH).primary
        stalled = next(n for n in cluster.nodes if n.name != primary)
        counters = await asyncio.to_thread(proxy_counters, cluster)
        stall_from = time.monotonic()
        stalled.pause()
        try:
            await asyncio.sleep(args.stall)
        finally:
            stalled.resume()
        stall_to = time.monotonic()
        # Reads started during the stall may end after it: let them.
        await asyncio.sleep(READ_DEADLINE)
        stall_counters = delta(await asyncio.to_thread(proxy_counters, cluster), counters)
        await until(lambda: up_to_date(address, RELATIVE_PATH), 60, "the stalled node back")

        print("kill", flush=True)
        counters = await asyncio.to_thread(proxy_counters, cluster)
        kill_from = time.monotonic()
        cluster.node(primary).kill()
        await asyncio.sleep(args.gap)
        second = next(n for n in cluster.nodes if n.name != primary and n.name != stalled.name)
        second.kill()
        await asyncio.sleep(args.gap)
        kill_to = time.monotonic()
        readers.stopping = True
        await asyncio.gather(*tasks)
        kill_counters = delta(await asyncio.to_thread(proxy_counters, cluster), counters)

        normal = summary(readers.window(normal_from, normal_to))
        results["normal"] = {
            **normal,
            "counters": normal_counters,
            "hedged_fraction": round(
                normal_counters["hedges_sent"] / max(1.0, normal_counters["accessors"]), 4
            ),
        }
        results["stall"] = {
            **summary(readers.window(stall_from, stall_to)),
            "seconds": args.stall,
            "counters": stall_counters,
        }
        results["kill"] = {
            **summary(readers.window(kill_from, kill_to)),
            "killed": [primary, second.name],
            "gap_s": args.gap,
            "counters": kill_counters,
        }
        before_p99 = results["normal"]["latency"]["p99_ms"]
        results["goal"] = {
            "stall_p99_limit_ms": max(3 * before_p99, 250.0),
            "stall_p99_met": results["stall"]["latency"]["p99_ms"] <= max(3 * before_p99, 250.0),
            "no_failed_reads": results["stall"]["failed"] == 0 and results["kill"]["failed"] == 0,
        }
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)
    return results


def report(results: dict[str, Any]) -> str:
    rows = []
    for phase in ("normal", "stall", "kill"):
        r = results[phase]
        c = r["counters"]
        rows.append(
            (
                phase,
                r["reads"],
                r["failed"],
                ", ".join(r["errors"]) or "-",
                r["latency"]["p50_ms"],
                r["latency"]["p99_ms"],
                f"{c['hedges_sent']:.0f} / {c['hedges_won']:.0f}",
                f"{c['retries']:.0f}",
                f"{c['ejections']:.0f}",
            )
        )
    table = markdown_table(
        (
            "phase",
            "reads",
            "failed",
            "errors",
            "p50 (ms)",
            "p99 (ms)",
            "hedges sent / won",
            "retries",
            "ejections",
        ),
        rows,
    )
    goal = results["goal"]
    return (
        f"{table}\n\nhedged in normal operation: {results['normal']['hedged_fraction']:.2%} of "
        f"accessor RPCs; stall p99 limit {goal['stall_p99_limit_ms']:.0f} ms: "
        f"{'met' if goal['stall_p99_met'] else 'NOT met'}; 0 failed reads: "
        f"{'met' if goal['no_failed_reads'] else 'NOT met'}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--readers", type=int, default=4, help="concurrent reader loops")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--normal", type=float, default=20.0, help="seconds of normal reads")
    parser.add_argument("--stall", type=float, default=6.0, help="seconds of SIGSTOP")
    parser.add_argument("--gap", type=float, default=4.0, help="seconds after each kill")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    if args.readers < 1 or args.normal <= 0 or args.stall <= 0 or args.gap <= 0:
        parser.error("--readers, --normal, --stall and --gap must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    results = asyncio.run(run(args))
    print(machine_table(results["machine"]))
    print()
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
