"""etcd faults on a three-member etcd cluster.

* Losing one member (the raft leader) is invisible to clients: no write or
  read fails or ends in doubt because of it.
* Losing quorum (two members): writes fail closed (never acknowledged while
  nothing can be recorded), reads go on from the proxies' last known state for
  at most ``stale_read_limit``, then stop; once quorum is back, writes resume
  and every invariant holds.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.chaos import nemesis
from tests.chaos.conftest import VERIFYING, Scenario

pytestmark = pytest.mark.timeout(240)

STALE_READ_LIMIT = 5.0
# A lost compare-and-swap race: the old value moved, or another writer held the ref.
CONTENTION = ("FAILED_PRECONDITION", "ABORTED")
# The cache's last confirmation can predate the fault by one progress
# notification interval (1 s); a loaded machine adds some more.
STALE_SLACK = 4.0


async def test_etcd_member_loss(scenario: Scenario) -> None:
    # The default lease TTL: its safety margin (TTL / 2) must outlast an etcd
    # leader election, as it does in production.
    cluster = await scenario.start(etcd_size=3, settings={"election": {"ttl": "5s"}})
    assert cluster.etcd is not None
    await scenario.run_workload()

    index = cluster.etcd.leader_index()
    assert index is not None
    fault = await asyncio.to_thread(nemesis.kill_etcd_member, cluster, index, scenario.faults)
    await scenario.acknowledged(30, 60, "writes without one etcd member", after=fault.at)
    await asyncio.to_thread(cluster.etcd.restart, index)
    back = time.monotonic()
    await scenario.acknowledged(10, 30, "writes after the member came back", after=back)
    await scenario.finish()

    # Only lost compare-and-swap races (contention, also without any fault) may fail.
    doubtful = [
        o
        for o in scenario.history.writes()
        if o.end >= fault.at
        and o.outcome != "ok"
        and not (o.kind == "cas" and o.detail.startswith(CONTENTION))
    ]
    failed_reads = [o for o in scenario.history.ops if o.kind == "read" and o.outcome == "failed"]
    assert not doubtful, [(o.key, o.detail) for o in doubtful]
    assert not failed_reads, [(o.key, o.detail) for o in failed_reads]


async def test_etcd_quorum_loss(scenario: Scenario) -> None:
    # Writes applied while etcd could not record them may leave replicas differing
    # at equal generations until the verifier finds it.
    cluster = await scenario.start(
        etcd_size=3, settings={"stale_read_limit": f"{STALE_READ_LIMIT}s", **VERIFYING}
    )
    assert cluster.etcd is not None
    await scenario.run_workload()

    lost = [i for i in range(3) if i != cluster.etcd.leader_index()][:2]
    fault = scenario.faults.record("etcd-quorum-loss", ",".join(f"etcd{i}" for i in lost))
    for index in lost:
        await asyncio.to_thread(cluster.etcd.kill, index)
    # Reads stop once the cached state is older than the limit.
    stop_by = fault.at + STALE_READ_LIMIT + STALE_SLACK
    # The outage itself lasts until a little past that bound (it is the fault, not a wait).
    await asyncio.sleep(max(0.0, stop_by + 2.0 - time.monotonic()))
    heal = scenario.faults.record("etcd-quorum-back", ",".join(f"etcd{i}" for i in lost))
    for index in lost:
        await asyncio.to_thread(cluster.etcd.restart, index)
    await scenario.acknowledged(10, 60, "writes once etcd has quorum again", after=heal.at)
    measured = await scenario.finish()

    # Writes failed closed: none sent during the outage was acknowledged.
    acked = [o for o in scenario.history.writes("ok") if fault.at < o.start and o.end < heal.at]
    assert not acked, [(o.key, o.start - fault.at) for o in acked]
    during = [o for o in scenario.history.ops if o.kind == "read" and fault.at < o.start < heal.at]
    served = [o for o in during if o.outcome == "ok"]
    # Reads went on from the known state for a while, and stopped within the bound.
    assert any(o.start < fault.at + STALE_READ_LIMIT - 1 for o in served), len(served)
    late = [o for o in served if o.start > stop_by]
    assert not late, [(o.key, round(o.start - fault.at, 2)) for o in late]
    refused = [o for o in during if o.outcome == "failed" and "stale" in o.detail]
    assert refused, "no read was refused for stale cluster state"
    measured["reads_served_during_outage"] = len(served)
    measured["last_read_served_s"] = round(max(o.start for o in served) - fault.at, 2)
