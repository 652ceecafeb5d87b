from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections import Counter

from gitquorum.cluster.errors import ClaimLost, StoreUnavailable
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.lease import LeaseKeeper
from gitquorum.cluster.queue import JobType, QueueView, ReplicationQueue
from tests.harness.etcd import EtcdCluster
from tests.integration.cluster.conftest import StoreFactory
from tests.integration.cluster.polling import eventually

TARGETS = ("n1", "n2")
REPOS = 250
TTL = 2.0


async def test_three_workers_drain_a_thousand_jobs_while_one_dies(
    etcd1: EtcdCluster, make_store: StoreFactory, keys: Keyspace
) -> None:
    producer = ReplicationQueue(make_store(etcd1), keys)
    # 250 repositories x 2 targets x 2 job types: every replica has two jobs
    # that must run one after the other.
    specs = [
        (kind, repo, target)
        for repo in range(REPOS)
        for target in TARGETS
        for kind in (JobType.UPDATE, JobType.DELETE_REPLICA)
    ]
    sem = asyncio.Semaphore(32)

    async def enqueue(kind: JobType, repo: int, target: str) -> None:
        async with sem:
            source = "n3" if kind is JobType.UPDATE else None
            await producer.enqueue(kind, "vs", repo, f"r{repo}.git", target, source_node=source)

    await asyncio.gather(*(enqueue(*spec) for spec in specs))
    assert len(await producer.jobs()) == 1000

    runs: dict[tuple[str, int], list[tuple[float, float, str, str]]] = {}
    acked: Counter[str] = Counter()
    in_flight: dict[str, str] = {}

    async def worker(name: str, store_index: int, stop_after: int | None) -> None:
        store = make_store(etcd1)
        view = QueueView(store, keys)
        await view.start()
        queue = ReplicationQueue(store, keys, rng=random.Random(store_index), view=view)
        keeper = await LeaseKeeper(store, TTL, name=name).start()
        try:
            await work(name, queue, keeper, stop_after)
        finally:
            await view.close()

    async def work(
        name: str, queue: ReplicationQueue, keeper: LeaseKeeper, stop_after: int | None
    ) -> None:
        done = 0
        rng = random.Random(name)
        while True:
            claim = None
            for target in rng.sample(TARGETS, len(TARGETS)):
                claim = await queue.claim_next(keeper, targets=[("vs", target)])
                if claim is not None:
                    break
            if claim is None:
                if not await queue.jobs():
                    return
                await asyncio.sleep(0.02)  # others' jobs still running, orphans, a stale view
                continue
            job = claim.job
            replica = (job.target_node, job.repository_id)
            started = time.monotonic()
            in_flight[name] = job.job_id
            runs.setdefault(replica, []).append((started, float("inf"), name, job.job_id))
            index = len(runs[replica]) - 1
            try:
                await asyncio.sleep(rng.uniform(0, 0.002))  # the "replication"
            finally:
                # Record the end even when killed mid-job (cancellation).
                runs[replica][index] = (started, time.monotonic(), name, job.job_id)
                in_flight.pop(name, None)
            await queue.ack(claim)
            acked[job.job_id] += 1
            done += 1
            if stop_after is not None and done >= stop_after:
                # Die while holding the next claim: take one, then hang.
                claim = await queue.claim_next(keeper)
                if claim is not None:
                    replica = (claim.job.target_node, claim.job.repository_id)
                    runs.setdefault(replica, []).append(
                        (time.monotonic(), float("inf"), name, claim.job.job_id)
                    )
                    in_flight[name] = claim.job.job_id
                    await asyncio.Event().wait()

    async def recoverer() -> None:
        queue = ReplicationQueue(make_store(etcd1), keys)
        while True:
            try:
                await queue.recover_orphans()
            except (StoreUnavailable, ClaimLost):
                pass
            await asyncio.sleep(0.25)

    victim = asyncio.ensure_future(worker("victim", 0, stop_after=100))
    survivors = [asyncio.ensure_future(worker(f"w{i}", i, None)) for i in (1, 2)]
    rescue = asyncio.ensure_future(recoverer())
    # The victim dies (like kill -9: no revoke, no ack) holding a claim.
    await eventually(
        lambda: (
            "victim" in in_flight
            and sum(1 for r in runs.values() for x in r if x[2] == "victim") > 100
        ),
        60,
        "the victim to hold its last claim",
        step=0.002,
    )
    killed_at = time.monotonic()
    victim.cancel()
    # Its lease keeper dies with it: stop keep-alives without revoking.
    for task in asyncio.all_tasks():
        if task.get_name().startswith("lease-keeper-victim"):
            task.cancel()
    async with asyncio.timeout(120):
        await asyncio.gather(*survivors)
    rescue.cancel()

    assert await producer.jobs() == []
    assert len(acked) == 1000 and set(acked.values()) == {1}, "a job was lost or done twice"
    # Never two runs of one replica at once (including the victim's unfinished run).
    for replica, spans in runs.items():
        spans = [
            (s, min(e, killed_at) if n == "victim" and e == float("inf") else e)
            for s, e, n, _ in spans
        ]
        spans.sort()
        for (_s1, e1), (s2, _e2) in itertools.pairwise(spans):
            assert s2 >= e1, f"overlapping runs for {replica}"
    victim_jobs = [
        j for r in runs.values() for (_s, e, n, j) in r if n == "victim" and e == float("inf")
    ]
    assert len(victim_jobs) == 1  # the claim it died holding was redone by someone else
    assert acked[victim_jobs[0]] == 1
