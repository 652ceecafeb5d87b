"""The invariant checker: what must hold after any fault, once the cluster healed.

Given the recorded :class:`~tests.chaos.workload.History` and the final state
read from every replica on disk and through every proxy:

1. **No acknowledged write lost**: every ``ok`` create / push is present with
   its value; the shared branch is at or past the highest acknowledged
   compare-and-swap.
2. **Nothing invented**: every ref present is a seed ref or was written, with
   that value, by some ``ok`` or ``unknown`` operation (never by a ``failed``
   one, never a value nobody wrote).
3. **Converged**: every assigned replica is at the repository's generation
   and all replicas have the same ``CalculateChecksum`` and the same refs; no
   replica keeps a stale ``.lock`` file (a ref locked for good).
4. **No stale read**: a read returns the value of every write acknowledged
   before the read started, or a later one (shared branch: a chain position
   at least the highest acknowledged one; unique refs: their value).

Each check returns a list of problems (empty: it holds), so a failing test
shows every violation at once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc

from gitquorum.gitaly import (
    praefect_pb2,
    praefect_pb2_grpc,
    ref_pb2,
    ref_pb2_grpc,
    repository_pb2,
    repository_pb2_grpc,
    shared_pb2,
)
from tests.chaos.workload import SHARED, Chain, History, Op
from tests.harness import gitrepo
from tests.harness.cluster import VIRTUAL_STORAGE, Cluster

Refs = Mapping[str, str]


# -- the history on its own ----------------------------------------------------------------


def _written(history: History) -> dict[str, set[str]]:
    """ref -> values some ok or unknown write may have left there."""
    values: dict[str, set[str]] = {}
    for op in history.writes():
        if op.outcome in ("ok", "unknown"):
            values.setdefault(op.key, set()).add(op.value)
    return values


def _acked_shared_before(history: History, chain: Chain) -> list[tuple[float, int]]:
    """(ack time, chain position) of acknowledged compare-and-swaps, by ack time."""
    acked = [
        (op.end, chain.counter(op.value) or 0) for op in history.writes("ok") if op.kind == "cas"
    ]
    return sorted(acked)


def check_reads(history: History, chain: Chain, seed: Refs) -> list[str]:
    """No read returned data older than a write acknowledged before it started,
    or a value nobody wrote."""
    problems: list[str] = []
    written = _written(history)
    acked_shared = _acked_shared_before(history, chain)
    acked_creates: dict[str, Op] = {
        op.key: op for op in history.writes("ok") if op.kind in ("create", "push")
    }
    for read in history.reads():
        if read.key == SHARED:
            position = chain.counter(read.value)
            if position is None:
                problems.append(f"read of {SHARED} returned {read.value!r}, not a chain commit")
                continue
            if read.value != seed.get(SHARED) and read.value not in written.get(SHARED, set()):
                problems.append(f"read of {SHARED} returned position {position}, never written")
            floor = max((p for end, p in acked_shared if end < read.start), default=0)
            if position < floor:
                problems.append(
                    f"stale read through {read.proxy}: {SHARED} at position {position} but "
                    f"position {floor} was acknowledged before the read started"
                )
            continue
        write = acked_creates.get(read.key)
        if write is not None and write.end < read.start and read.value != write.value:
            problems.append(
                f"stale read through {read.proxy}: {read.key} read as {read.value or 'absent'!r}, "
                f"acknowledged as {write.value} before the read started"
            )
        elif read.value and read.value not in written.get(read.key, set()):
            problems.append(f"read of {read.key} returned {read.value}, never written")
    return problems


# -- one replica's (or one proxy's) refs ---------------------------------------------------------


def check_refs(refs: Refs, history: History, chain: Chain, seed: Refs, where: str) -> list[str]:
    problems: list[str] = []
    written = _written(history)
    for op in history.writes("ok"):
        if op.kind in ("create", "push") and refs.get(op.key) != op.value:
            problems.append(
                f"{where}: acknowledged {op.kind} of {op.key} = {op.value} lost "
                f"(found {refs.get(op.key, 'nothing')})"
            )
    shared = refs.get(SHARED, "")
    position = chain.counter(shared)
    floor = max((p for _, p in _acked_shared_before(history, chain)), default=0)
    if position is None:
        problems.append(f"{where}: {SHARED} = {shared!r} is not a chain commit")
    elif position < floor:
        problems.append(
            f"{where}: {SHARED} at position {position}, below acknowledged position {floor}"
        )
    for name, value in refs.items():
        if seed.get(name) == value:
            continue
        if value not in written.get(name, set()):
            problems.append(f"{where}: {name} = {value} was never written by any ok/unknown op")
    return problems


# -- reading the final state ---------------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    node: str
    address: str  # the node's own address (not a relay)
    replica_path: str
    generation: int
    assigned: bool


@dataclass(frozen=True)
class State:
    primary: str
    generation: int
    replicas: tuple[Replica, ...]


def repository(relative_path: str) -> shared_pb2.Repository:
    return shared_pb2.Repository(storage_name=VIRTUAL_STORAGE, relative_path=relative_path)


def metadata(address: str, relative_path: str) -> praefect_pb2.GetRepositoryMetadataResponse:
    with grpc.insecure_channel(address) as channel:
        return praefect_pb2_grpc.PraefectInfoServiceStub(channel).GetRepositoryMetadata(
            praefect_pb2.GetRepositoryMetadataRequest(
                path=praefect_pb2.GetRepositoryMetadataRequest.Path(
                    virtual_storage=VIRTUAL_STORAGE, relative_path=relative_path
                )
            ),
            timeout=10,
        )


def state(cluster: Cluster, proxy: str, relative_path: str) -> State:
    meta = metadata(proxy, relative_path)
    replicas = tuple(
        Replica(
            r.storage, cluster.node(r.storage).address, meta.replica_path, r.generation, r.assigned
        )
        for r in meta.replicas
    )
    return State(meta.primary, meta.generation, replicas)


def checksum(replica: Replica) -> str:
    with grpc.insecure_channel(replica.address) as channel:
        answer = repository_pb2_grpc.RepositoryServiceStub(channel).CalculateChecksum(
            repository_pb2.CalculateChecksumRequest(
                repository=shared_pb2.Repository(
                    storage_name=replica.node, relative_path=replica.replica_path
                )
            ),
            timeout=30,
        )
    return str(answer.checksum)


def converged(cluster: Cluster, proxy: str, relative_path: str) -> State | None:
    """The repository's state once every assigned replica is up to date with one checksum."""
    try:
        current = state(cluster, proxy, relative_path)
        assigned = [r for r in current.replicas if r.assigned]
        if len(assigned) != len(cluster.nodes):
            return None
        if any(r.generation != current.generation for r in assigned):
            return None
        if len({checksum(r) for r in assigned}) != 1:
            return None
    except grpc.RpcError:
        return None
    return current


# The verifier's log lines that say why a repository is not settled yet.
VERIFIER_WAITS = (
    "a write is in flight; checking again later",
    "replicas changed while being verified; checking again later",
    "repository changed while being verified; checking again later",
    "replicas disagree with no majority",
    "replica not verifiable now",
)


def explain_unconverged(cluster: Cluster, proxy: str, relative_path: str) -> str:
    """What a convergence wait saw last: each replica's generation and checksum,
    and how often the proxies' verifiers said why they did not settle it."""
    try:
        current = state(cluster, proxy, relative_path)
    except grpc.RpcError as exc:
        return f"metadata unreadable: {exc.code()}"  # type: ignore[attr-defined]
    parts = [f"primary {current.primary} at generation {current.generation}"]
    for replica in current.replicas:
        try:
            found = checksum(replica)[:12]
        except grpc.RpcError as exc:
            found = str(exc.code())  # type: ignore[attr-defined]
        parts.append(
            f"{replica.node}: generation {replica.generation}"
            f"{'' if replica.assigned else ' (unassigned)'} checksum {found}"
        )
    for message in VERIFIER_WAITS:
        seen = sum(
            p.log_path.read_text(errors="replace").count(message)
            for p in cluster.proxies
            if p.log_path.exists()
        )
        if seen:
            parts.append(f"verifier {seen}x: {message}")
    return "; ".join(parts)


def disk_refs(cluster: Cluster, replica: Replica) -> dict[str, str]:
    return gitrepo.refs(cluster.replica_dir(replica.node, replica.replica_path))


def proxy_refs(proxy: str, relative_path: str) -> dict[str, str]:
    """Every ref as one read through ``proxy`` sees it (ListRefs)."""
    found: dict[str, str] = {}
    with grpc.insecure_channel(proxy) as channel:
        stub = ref_pb2_grpc.RefServiceStub(channel)
        for response in stub.ListRefs(
            ref_pb2.ListRefsRequest(repository=repository(relative_path), patterns=[b"refs/"]),
            timeout=30,
        ):
            for ref in response.references:
                found[ref.name.decode()] = ref.target
    return found


def serves_reads(proxies: Sequence[str], relative_path: str) -> bool:
    """Whether every proxy answers a read of the repository (its cluster state is
    fresh again: right after etcd regains quorum a proxy refuses reads until its
    watches are back, by design)."""
    try:
        for proxy in proxies:
            proxy_refs(proxy, relative_path)
    except grpc.RpcError:
        return False
    return True


def check_final(
    cluster: Cluster,
    proxies: Sequence[str],
    relative_path: str,
    history: History,
    chain: Chain,
    seed: Refs,
    final: State,
) -> list[str]:
    """Refs on every replica's disk and through every live proxy, and their agreement."""
    problems: list[str] = []
    on_disk = {r.node: disk_refs(cluster, r) for r in final.replicas if r.assigned}
    for node, refs in on_disk.items():
        problems += check_refs(refs, history, chain, seed, f"replica on {node}")
    for replica in final.replicas:
        # A git killed mid-update leaves its lock files: the ref is stuck for good.
        root = cluster.replica_dir(replica.node, replica.replica_path)
        stale = sorted(str(p.relative_to(root)) for p in root.rglob("*.lock"))
        if stale:
            problems.append(f"replica on {replica.node}: stale lock files {stale[:5]}")
    if len({tuple(sorted(refs.items())) for refs in on_disk.values()}) != 1:
        problems.append(f"replicas differ on disk: { {n: len(r) for n, r in on_disk.items()} }")
    for proxy in proxies:
        problems += check_refs(
            proxy_refs(proxy, relative_path), history, chain, seed, f"read through {proxy}"
        )
    return problems
