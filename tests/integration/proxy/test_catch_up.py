"""An outdated replica catches up while its repository keeps taking writes.

A secondary is killed while a writer updates the repository about 40 times a
second, comes back, and must be recorded up to date again while the writes go
on, with every acknowledged write on its disk and no write failing because of
the catch-up. Without a catch-up that holds the repository's writes for its
last copy, each repair ends a few generations behind and the replica stays
outdated for as long as the writes continue.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from gitquorum.gitaly import ref_pb2, ref_pb2_grpc
from tests.harness import gitrepo
from tests.harness.cluster import Cluster
from tests.harness.node import wait_for
from tests.integration.proxy import helpers

RATE = 40.0  # writes a second
HOLDS = "gitquorum_write_hold_seconds_count"


@dataclass
class Writer:
    """Moves ten branches among a few commits at a steady pace through one
    proxy (a busy repository whose size stays the same), each write recorded."""

    address: str
    relative_path: str
    oids: list[str]
    acknowledged: list[tuple[float, str, str]] = field(default_factory=list)
    failed: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def last_acknowledged(self) -> dict[str, str]:
        """Each branch's value after the last write (the writer is sequential)."""
        return {ref: oid for _, ref, oid in self.acknowledged}

    def run(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            stub = ref_pb2_grpc.RefServiceStub(channel)
            next_start = time.monotonic()
            count = 0
            while not self.stop.is_set():
                count += 1
                ref = f"refs/heads/busy/{count % 10}"
                oid = self.oids[count % len(self.oids)]
                update = ref_pb2.UpdateReferencesRequest.Update(
                    reference=ref.encode(), new_object_id=oid.encode()
                )
                request = ref_pb2.UpdateReferencesRequest(
                    repository=helpers.repository(self.relative_path), updates=[update]
                )
                started = time.monotonic()
                try:
                    stub.UpdateReferences(iter([request]), timeout=30)
                    self.acknowledged.append((started, ref, oid))
                except grpc.RpcError as exc:
                    self.failed.append((started, f"{exc.code().name}: {exc.details()}"))
                next_start += 1 / RATE
                self.stop.wait(max(0.0, next_start - time.monotonic()))


def test_a_replica_catches_up_while_writes_continue(
    faulty: Cluster, source: Path, relative_path: str
) -> None:
    address = faulty.proxies[0].address
    helpers.create(address, relative_path)
    helpers.push(address, relative_path, source, "main")
    meta = helpers.wait_converged(address, relative_path).meta
    node = faulty.node(sorted(r.storage for r in meta.replicas if r.storage != meta.primary)[0])
    oids = gitrepo.git("rev-list", "main", cwd=source).split()

    writer = Writer(address, relative_path, oids)
    thread = threading.Thread(target=writer.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(writer.acknowledged) >= 20, 30, 0.05, "writes before the kill")
        node.kill()
        helpers.wait_unhealthy(faulty, node.name)
        missed = len(writer.acknowledged)
        wait_for(lambda: len(writer.acknowledged) >= missed + 40, 30, 0.05, "writes it misses")
        assert helpers.generations(helpers.metadata(address, relative_path))[node.name] < (
            helpers.metadata(address, relative_path).generation
        )
        node.start()
        back = time.monotonic()
        generation_back = helpers.metadata(address, relative_path).generation
        helpers.wait_healthy(faulty, node.name)

        def caught_up() -> bool:
            current = helpers.metadata(address, relative_path)
            return helpers.generations(current).get(node.name) == current.generation

        wait_for(caught_up, 60, 0.05, f"{node.name} up to date while writes continue")
        took = time.monotonic() - back
        # The writes went on meanwhile (the replica caught up with a moving target).
        assert helpers.metadata(address, relative_path).generation >= generation_back + 3
        count = len(writer.acknowledged)
        wait_for(lambda: len(writer.acknowledged) >= count + 20, 30, 0.05, "writes after")
        # It takes part in the writes again: still up to date 20 writes later.
        assert caught_up()
    finally:
        writer.stop.set()
        thread.join(30)
    assert writer.failed == []
    text = helpers.scrape(faulty.proxies[0].metrics_port)
    assert helpers.sample(text, HOLDS) >= 1
    # Every acknowledged write is on every replica once writes stop.
    helpers.wait_converged(address, relative_path)
    refs = helpers.replica_refs(faulty, address, relative_path)
    expected = writer.last_acknowledged()
    assert len(expected) == 10
    for name, replica in refs.items():
        assert {ref: replica.get(ref) for ref in expected} == expected, name
    print(f"caught up {took:.2f}s after the node was back, {len(writer.failed)} writes failed")
