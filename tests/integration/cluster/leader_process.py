"""A candidate in its own process, so a test can SIGSTOP it while it leads.

Usage: python leader_process.py <cluster> <ttl> <endpoint>...

Prints ``LEADER <create_revision> <lease>`` once it leads, then every 50 ms
makes a fenced write with the token it got *at election time* (deliberately
not asking whether it still leads, to show that etcd itself refuses a stale
token) and prints ``WROTE <n> <revision>`` or ``FENCED <n>``.
"""

from __future__ import annotations

import asyncio
import sys

from gitquorum.cluster.election import LeaderElection, fenced_txn
from gitquorum.cluster.errors import LeadershipLost, StoreUnavailable
from gitquorum.cluster.etcd_store import EtcdConfig, EtcdStore
from gitquorum.cluster.keys import Keyspace
from gitquorum.cluster.store import Op


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(cluster: str, ttl: float, endpoints: list[str]) -> None:
    keys = Keyspace(cluster)
    store = EtcdStore(EtcdConfig(endpoints=tuple(endpoints)))
    election = LeaderElection(store, keys, "subprocess", ttl=ttl)
    await election.start()
    async with asyncio.timeout(30):
        await election.wait_until(True)
    token = election.token
    say(f"LEADER {token.create_revision} {token.lease_id}")
    n = 0
    while True:
        n += 1
        try:
            result = await fenced_txn(
                store, token, [], [Op.put(f"{keys.prefix}writes/{n:06d}", b"subprocess")]
            )
            say(f"WROTE {n} {result.revision}")
        except LeadershipLost:
            say(f"FENCED {n}")
        except StoreUnavailable as exc:
            say(f"UNAVAILABLE {n} {exc}")
        await asyncio.sleep(0.05)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), sys.argv[3:]))
