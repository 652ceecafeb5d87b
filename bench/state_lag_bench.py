"""How far one proxy's watch-fed cluster state trails a write another proxy made.

A *writer* and a *follower* in two processes (like two proxies) share one real
etcd (``--members 1`` or ``3``). The follower follows a key prefix with the
same :class:`~gitquorum.cluster.mirror.PrefixMirror` the repository cache uses
and notes, on the machine's monotonic clock (one clock for both processes),
when each key was applied. The writer puts keys one at a time at ``--rate``
per second and notes when etcd acknowledged each. The script reports:

* **watch lag**: from the writer's acknowledgement to the follower having
  applied the key, i.e. how long after a write was acknowledged through one
  proxy a read through another can still miss it (negative when the follower
  applied it before the writer's answer arrived);
* **state age**: the follower's time since its last contact with etcd (watch
  event or progress notification, what ``stale_read_limit`` is checked
  against), sampled every 10 ms while idle and while writes flow;
* **strong-read price**: one etcd ``get`` of one key per read, linearizable
  and serializable, what a read that checks etcd first would add.

Usage::

    python bench/state_lag_bench.py [--members 1] [--writes 500] [--rate 50] [--idle 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Latency, machine_info, machine_table, markdown_table
from gitquorum.cluster.etcd_store import EtcdConfig, EtcdStore
from gitquorum.cluster.mirror import PrefixMirror
from gitquorum.launch.etcd import EtcdCluster

PREFIX = "/bench/state-lag/"
DONE = PREFIX + "~done"


def _store(endpoints: list[str], progress_interval: float) -> EtcdStore:
    return EtcdStore(
        EtcdConfig(endpoints=endpoints, watch_progress_interval=progress_interval)
        if progress_interval
        else EtcdConfig(endpoints=endpoints)
    )


async def follow(endpoints: list[str], progress_interval: float, out: Path) -> None:
    """The follower: apply times per key and state-age samples, until DONE appears."""
    store = await _store(endpoints, progress_interval).connect()
    applied: dict[str, float] = {}
    done = asyncio.Event()

    def apply(events: Any, _revision: int) -> None:
        now = time.monotonic()
        for event in events:
            applied.setdefault(event.kv.key, now)
            if event.kv.key == DONE:
                done.set()

    mirror = PrefixMirror(store, PREFIX, reset=lambda _kvs, _rev: None, apply=apply)
    await mirror.start()
    ages: list[tuple[float, float]] = []
    print("ready", flush=True)
    while not done.is_set():
        now = time.monotonic()
        ages.append((now, now - mirror.last_sync))
        await asyncio.sleep(0.01)
    await mirror.close()
    await store.close()
    out.write_text(json.dumps({"applied": applied, "ages": ages}))


async def write(args: argparse.Namespace, endpoints: list[str]) -> dict[str, Any]:
    store = await _store(endpoints, args.progress_interval).connect()
    out = Path(tempfile.mkstemp(suffix=".json")[1])
    follower = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.state_lag_bench",
        "--follow",
        json.dumps(endpoints),
        "--out",
        str(out),
        "--progress-interval",
        str(args.progress_interval),
        stdout=asyncio.subprocess.PIPE,
    )
    assert follower.stdout is not None
    await follower.stdout.readline()
    idle_from = time.monotonic()
    await asyncio.sleep(args.idle)
    idle_to = busy_from = time.monotonic()
    acked: dict[str, float] = {}
    for i in range(args.writes):
        key = f"{PREFIX}{i:06d}"
        await store.put(key, b"x" * 200)
        acked[key] = time.monotonic()
        await asyncio.sleep(max(0.0, busy_from + (i + 1) / args.rate - time.monotonic()))
    busy_to = time.monotonic()
    # The price of checking etcd on every read: one get of one key.
    reads: dict[str, list[float]] = {"linearizable": [], "serializable": []}
    for _ in range(args.gets):
        for kind, serializable in (("linearizable", False), ("serializable", True)):
            started = time.perf_counter()
            await store._kv.get(f"{PREFIX}000000".encode(), serializable=serializable)
            reads[kind].append(time.perf_counter() - started)
    await store.put(DONE, b"")
    async with asyncio.timeout(60):
        await follower.wait()
    data = json.loads(out.read_text())
    out.unlink()
    await store.delete(PREFIX, prefix=True)
    await store.close()
    applied: dict[str, float] = data["applied"]
    lags = [applied[k] - t for k, t in acked.items() if k in applied]
    idle_ages = [age for at, age in data["ages"] if idle_from + 1 < at < idle_to]
    busy_ages = [age for at, age in data["ages"] if busy_from < at < busy_to]
    return {
        "members": args.members,
        "progress_interval_s": args.progress_interval or EtcdConfig().watch_progress_interval,
        "writes": args.writes,
        "missing": args.writes - len(lags),
        "watch_lag": Latency.of(lags).as_dict(),
        "watch_lag_max_ms": round(max(lags) * 1000, 3),
        "state_age_idle": Latency.of(idle_ages).as_dict(),
        "state_age_idle_max_s": round(max(idle_ages), 3),
        "state_age_busy": Latency.of(busy_ages).as_dict(),
        "state_age_busy_max_s": round(max(busy_ages), 3),
        "get": {kind: Latency.of(samples).as_dict() for kind, samples in reads.items()},
    }


def report(result: dict[str, Any]) -> str:
    rows = [
        ("watch lag (ack on A to applied on B)", result["watch_lag"]),
        ("state age, idle", result["state_age_idle"]),
        (f"state age, {result['writes']} writes", result["state_age_busy"]),
        ("etcd get, linearizable", result["get"]["linearizable"]),
        ("etcd get, serializable", result["get"]["serializable"]),
    ]
    table = markdown_table(
        ("measure", "p50 (ms)", "p90 (ms)", "p99 (ms)", "count"),
        [(name, lat["p50_ms"], lat["p90_ms"], lat["p99_ms"], lat["count"]) for name, lat in rows],
    )
    return (
        f"{table}\n\nwatch lag max {result['watch_lag_max_ms']} ms; state age max "
        f"{result['state_age_idle_max_s']} s idle, {result['state_age_busy_max_s']} s busy; "
        f"missing {result['missing']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1, choices=(1, 3))
    parser.add_argument("--writes", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0, help="writes per second")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds without writes")
    parser.add_argument("--gets", type=int, default=500, help="gets of each kind")
    parser.add_argument(
        "--progress-interval", type=float, default=0.0, help="watch progress requests (s)"
    )
    parser.add_argument("--json", default=None, help="write the figures to this file")
    parser.add_argument("--follow", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.follow:
        asyncio.run(follow(json.loads(args.follow), args.progress_interval, Path(args.out)))
        return
    info = machine_info()
    with EtcdCluster(size=args.members) as etcd:
        result = asyncio.run(write(args, etcd.endpoints))
    print(machine_table(info))
    print()
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, **result}, indent=2))


if __name__ == "__main__":
    main()
