from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from gitquorum.cluster.election import LeaderElection
from gitquorum.cluster.keys import Keyspace
from tests.harness.etcd import EtcdCluster
from tests.integration.cluster.conftest import StoreFactory
from tests.integration.cluster.polling import eventually

TTL = 2.0
SCRIPT = str(Path(__file__).with_name("leader_process.py"))
ROOT = str(Path(__file__).resolve().parents[3])


async def test_three_proxies_race_and_exactly_one_leads_at_a_time(
    etcd3: EtcdCluster, make_store: StoreFactory, keys: Keyspace
) -> None:
    elections = [LeaderElection(make_store(etcd3), keys, f"proxy{i}", ttl=TTL) for i in range(3)]
    # Listeners run synchronously at every gain and loss, in one event loop:
    # counting them shows any moment with two leaders, however short.
    leading: set[str] = set()
    most = 0

    def track(proxy: str):  # type: ignore[no-untyped-def]
        def listener(is_leader: bool, _token: object) -> None:
            nonlocal most
            (leading.add if is_leader else leading.discard)(proxy)
            most = max(most, len(leading))

        return listener

    for election in elections:
        election.add_listener(track(election.proxy))
    await asyncio.gather(*(e.start() for e in elections))
    await eventually(lambda: any(e.is_leader for e in elections), 10, "a leader")
    tokens = set()
    # Hand leadership around: each resignation must produce exactly one new leader.
    for _ in range(4):
        leader = next(e for e in elections if e.is_leader)
        tokens.add(leader.token.create_revision)
        assert await leader.current_leader() == leader.proxy
        await leader.resign()
        await eventually(
            lambda leader=leader: any(e.is_leader and e is not leader for e in elections),
            10,
            "a new leader",
        )
        assert sum(e.is_leader for e in elections) == 1
    assert most == 1, "two proxies believed they led at the same time"
    assert len(tokens) == 4  # every term has its own fencing token
    for e in elections:
        await e.close()


async def read_line(proc: asyncio.subprocess.Process, prefix: str, within: float) -> str:
    """The next line of the leader process starting with ``prefix``."""
    assert proc.stdout is not None
    async with asyncio.timeout(within):
        async for raw in proc.stdout:
            line = raw.decode()
            if line.startswith(prefix):
                return line.strip()
    raise AssertionError("leader process exited")


async def test_paused_leader_is_replaced_and_its_stale_token_is_refused(
    etcd3: EtcdCluster, make_store: StoreFactory, keys: Keyspace
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        SCRIPT,
        keys.cluster,
        str(TTL),
        *etcd3.endpoints,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": f"{ROOT}/src:{ROOT}"},
    )
    try:
        line = await read_line(proc, "LEADER", 20)
        old_token = int(line.split()[1])
        await read_line(proc, "WROTE", 5)
        proc.send_signal(signal.SIGSTOP)
        paused_at = time.monotonic()
        store = make_store(etcd3)
        successor = LeaderElection(store, keys, "successor", ttl=TTL)
        await successor.start()
        async with asyncio.timeout(TTL * 4):
            await successor.wait_until(True)
        # The old lease had to expire first.
        assert time.monotonic() - paused_at >= TTL * 0.9
        new_token = successor.token.create_revision
        assert new_token > old_token
        proc.send_signal(signal.SIGCONT)
        await read_line(proc, "FENCED", 10)
        writes = await store.range(f"{keys.prefix}writes/", prefix=True)
        assert writes.kvs, "the leader wrote nothing before its pause"
        assert all(kv.mod_revision < new_token for kv in writes.kvs)
        # And the successor's own fenced writes go through.
        result = await successor.leader_txn([], [])
        assert result.succeeded
        await successor.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        # To the end of its output too: a pipe left unread when the test's loop
        # closes is collected later, with a warning, in another test.
        await proc.communicate()
