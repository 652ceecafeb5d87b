"""``gitquorum verify``: have the verifier re-check replicas now.

``MarkUnverified`` on a proxy forgets when the selected replicas were last
verified, so the leader's verifier (which takes the least recently verified
first) checks them on its next passes: that the up-to-date replicas of each
repository exist on disk and agree; a replica that differs from a majority of
them is marked outdated and repaired from that majority. Select one repository (``--repository`` or
``--repository-id``), a whole virtual storage, or one node of it
(``--storage``). With ``--wait`` the command waits until every selected
replica on a healthy node has been verified again and reports what changed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

from gitquorum.cli import admin_common as common
from gitquorum.cli.admin_view import consensus_of, read_proxies
from gitquorum.cli.progress import Progress
from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.cluster.repositories import RepositoryRecord, RepositoryStore, decode_record
from gitquorum.cluster.store import EventType
from gitquorum.gitaly import praefect_pb2, praefect_pb2_grpc
from gitquorum.proxy.verifier import VerificationStore


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common.add_common_arguments(parser, proxy=True)
    parser.add_argument(
        "--repository", "--relative-path", dest="repository", metavar="PATH", help="one repository"
    )
    parser.add_argument("--repository-id", type=int, metavar="ID", help="one repository, by id")
    parser.add_argument(
        "--storage", metavar="NODE", help="only this node's replicas (with a virtual storage)"
    )
    parser.add_argument(
        "--wait",
        type=common.parse_duration_arg,
        metavar="DURATION",
        help="wait up to this long (e.g. 60s) for the verifier to re-check them",
    )


def selection(
    args: argparse.Namespace, vs: str, repository_id: int | None
) -> praefect_pb2.MarkUnverifiedRequest:
    if repository_id is not None:
        return praefect_pb2.MarkUnverifiedRequest(repository_id=repository_id)
    if args.storage:
        return praefect_pb2.MarkUnverifiedRequest(
            storage=praefect_pb2.MarkUnverifiedRequest.Storage(
                virtual_storage=vs, storage=args.storage
            )
        )
    return praefect_pb2.MarkUnverifiedRequest(virtual_storage=vs)


def selected_replicas(
    records: tuple[RepositoryRecord, ...],
    vs: str,
    repository_id: int | None,
    node: str | None,
    healthy: frozenset[str],
) -> set[tuple[int, str]]:
    """(repository id, node) of every replica the verifier will re-check."""
    chosen = set()
    for record in records:
        if record.virtual_storage != vs:
            continue
        if repository_id is not None and record.repository_id != repository_id:
            continue
        for replica in record.replica_nodes:
            if (node is None or replica == node) and replica in healthy:
                chosen.add((record.repository_id, replica))
    return chosen


class Reverification:
    """Follows the selected replicas from before ``MarkUnverified`` until re-verified.

    A replica the verifier finds missing or different is marked outdated (a
    missing one at generation 0 even drops out of the record) and may be
    repaired before the next poll, so demotions are collected from the watch
    on the records, which starts before the replicas are marked.
    """

    def __init__(
        self, admin: common.Admin, vs: str, repository_id: int | None, node: str | None
    ) -> None:
        self.admin = admin
        self.vs = vs
        self.repository_id = repository_id
        self.node = node
        self.state: dict[int, RepositoryRecord] = {}
        self.wanted: set[tuple[int, str]] = set()
        self.demoted: dict[tuple[int, str], dict[str, Any]] = {}
        self._watcher: asyncio.Task[None] | None = None

    def _selected(self, rid: int, replica: str) -> bool:
        return (self.repository_id is None or rid == self.repository_id) and (
            self.node is None or replica == self.node
        )

    async def start(self) -> None:
        store = await self.admin.store()
        prefix = self.admin.keys.repositories()
        initial = await store.get_prefix(prefix)
        for kv in initial.kvs:
            rvs, rid = self.admin.keys.parse_repository(kv.key)
            self.state[rid] = decode_record(rvs, rid, kv.value, kv.mod_revision)
        healthy = consensus_of(await read_proxies(store, self.admin.keys)).healthy(self.vs)
        self.wanted = selected_replicas(
            tuple(self.state.values()), self.vs, self.repository_id, self.node, healthy
        )
        self._watcher = asyncio.get_running_loop().create_task(
            self._follow(prefix, initial.revision + 1)
        )

    async def _follow(self, prefix: str, revision: int) -> None:
        store = await self.admin.store()
        async for batch in store.watch(prefix, prefix=True, start_revision=revision):
            for event in batch.events:
                rvs, rid = self.admin.keys.parse_repository(event.kv.key)
                if event.type is EventType.DELETE or rvs != self.vs:
                    self.state.pop(rid, None)
                    continue
                new = decode_record(rvs, rid, event.kv.value, event.kv.mod_revision)
                old = self.state.get(rid)
                self.state[rid] = new
                if old is None:
                    continue
                for replica in set(old.replica_nodes) | set(new.replica_nodes):
                    fell_behind = (
                        old.replica_generation(replica) == old.generation
                        and new.replica_generation(replica) < new.generation
                    )
                    if fell_behind and self._selected(rid, replica):
                        self.demoted[(rid, replica)] = {
                            "repository_id": rid,
                            "relative_path": new.relative_path,
                            "node": replica,
                        }
            if batch.compacted:
                return

    async def wait(self, since: float, deadline: float) -> tuple[int, int, list[dict[str, Any]]]:
        """(verified, selected, replicas that fell behind) once every selected replica
        still on a healthy node was verified after ``since``, or at the deadline."""
        store = await self.admin.store()
        verification = VerificationStore(store, self.admin.keys)
        progress = Progress.of(self.admin.args, "re-verified")
        try:
            while True:
                healthy = consensus_of(await read_proxies(store, self.admin.keys)).healthy(self.vs)
                wanted = {(rid, n) for rid, n in self.wanted if n in healthy and rid in self.state}
                verified_at = await verification.all()
                done = {
                    (rid, n)
                    for rid, n in wanted
                    if verified_at.get((self.vs, rid, n), 0.0) >= since
                }
                progress.update(len(done), len(wanted))
                if done == wanted or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(0.5)
        finally:
            progress.close()
            await self.close()
        demoted = sorted(self.demoted.values(), key=lambda d: (d["repository_id"], d["node"]))
        return len(done), len(wanted), demoted

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreUnavailable):
                await self._watcher
            self._watcher = None


def run(args: argparse.Namespace) -> int:
    async def body(admin: common.Admin) -> int:
        chosen = sum(x is not None for x in (args.repository, args.repository_id))
        if chosen > 1:
            raise common.UsageError("pass either --repository or --repository-id, not both")
        if chosen and args.storage:
            raise common.UsageError("--storage selects a node's replicas of a virtual storage")
        vs = admin.virtual_storage.name
        if args.storage and args.storage not in admin.nodes(vs):
            raise common.UsageError(f"node {args.storage!r} is not part of virtual storage {vs!r}")
        repository_id = args.repository_id
        if args.repository is not None:
            record = await RepositoryStore(await admin.store(), admin.keys).find(
                vs, args.repository
            )
            if record is None:
                raise common.CommandError(f"repository {vs}/{args.repository} not found")
            repository_id = record.repository_id
        follower = None
        if args.wait is not None:
            follower = Reverification(admin, vs, repository_id, args.storage)
            await follower.start()
        # Verifications recorded from now on are the re-checks (wall time, as recorded).
        since = time.time()
        try:
            channel = await admin.proxy()
            response = await praefect_pb2_grpc.PraefectInfoServiceStub(channel).MarkUnverified(
                selection(args, vs, repository_id),
                metadata=admin.proxy_metadata(),
                timeout=admin.timeout,
            )
        except BaseException:
            if follower is not None:
                await follower.close()
            raise
        data: dict[str, Any] = {
            "virtual_storage": vs,
            "repository_id": repository_id,
            "storage": args.storage,
            "replicas_marked": response.replicas_marked,
        }
        status = common.EXIT_OK
        if follower is not None:
            verified, wanted, demoted = await follower.wait(since, time.monotonic() + args.wait)
            data.update(verified=verified, selected=wanted, outdated=demoted)
            if verified < wanted or demoted:
                status = common.EXIT_PROBLEM

        def human() -> str:
            lines = [
                f"marked {response.replicas_marked} replica(s) unverified; "
                "the verifier re-checks them first"
            ]
            if args.wait is not None:
                lines.append(f"re-verified {data['verified']} of {data['selected']} replica(s)")
                lines.extend(
                    f"fell behind while verifying (queued for repair): {d['relative_path']} "
                    f"on {d['node']}"
                    for d in data["outdated"]
                )
            return "\n".join(lines)

        common.emit(args, data, human)
        return status

    return common.run(args, body)
