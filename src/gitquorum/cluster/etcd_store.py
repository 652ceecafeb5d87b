"""The :class:`~gitquorum.cluster.store.Store` contract on a real etcd (v3 API, etcd3aio).

* Several endpoints: one gRPC channel balancing round-robin over them; a
  killed member's in-flight calls fail with UNAVAILABLE and idempotent calls
  (reads, puts, deletes, lease grant/revoke) are retried on the others. A txn
  is sent once: its outcome after a failure is unknown and the caller decides.
* TLS (CA, client certificate and key files) and user/password auth (token
  refreshed in the background and on UNAUTHENTICATED).
* Watches run on our own watch stream rather than etcd3aio's helper, because
  resuming must start after the last *event* delivered (a response header's
  revision can be ahead of events still to come for a catching-up watcher),
  compaction must end the watch with a resync batch instead of hanging, and
  progress requests are needed to notice a silently dead stream.
* Every call is timed into an optional observer (Prometheus metrics) and every
  failure is wrapped into :class:`~gitquorum.cluster.errors.StoreUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
import grpc.aio
from etcd3aio._protobuf import rpc_pb2  # raw messages for compares and the watch stream
from etcd3aio.auth import AuthService
from etcd3aio.errors import (
    EtcdConnectionError,
    EtcdError,
    EtcdPermissionDeniedError,
    EtcdTransientError,
    EtcdUnauthenticatedError,
)
from etcd3aio.kv import KVService
from etcd3aio.lease import LeaseService
from etcd3aio.maintenance import MaintenanceService
from etcd3aio.watch import WatchStub
from tenacity import RetryCallState

from gitquorum.cluster.errors import Compacted, LeaseExpired, StoreUnavailable
from gitquorum.cluster.periodic import run_periodically
from gitquorum.cluster.store import (
    Compare,
    CompareOp,
    CompareTarget,
    EventType,
    KeyValue,
    Lease,
    Op,
    OpKind,
    RangeResult,
    Store,
    TxnResult,
    WatchBatch,
    WatchEvent,
    encode_key,
    prefix_end,
)
from gitquorum.cluster.store_retry import StoreRetry, backoff, transient
from gitquorum.wire.options import MAX_MESSAGE_SIZE

log = logging.getLogger(__name__)

T = TypeVar("T")

_COMPARE_TARGET = {
    CompareTarget.VERSION: rpc_pb2.Compare.VERSION,
    CompareTarget.CREATE: rpc_pb2.Compare.CREATE,
    CompareTarget.MOD: rpc_pb2.Compare.MOD,
    CompareTarget.VALUE: rpc_pb2.Compare.VALUE,
    CompareTarget.LEASE: rpc_pb2.Compare.LEASE,
}
_COMPARE_RESULT = {
    CompareOp.EQUAL: rpc_pb2.Compare.EQUAL,
    CompareOp.GREATER: rpc_pb2.Compare.GREATER,
    CompareOp.LESS: rpc_pb2.Compare.LESS,
    CompareOp.NOT_EQUAL: rpc_pb2.Compare.NOT_EQUAL,
}


class _Unauthenticated(StoreUnavailable):
    """etcd rejected the auth token (expired, or the server restarted)."""


_backoff = backoff()


def _retry_wait(state: RetryCallState) -> float:
    # A new token is all a rejected one needs: no wait before trying it.
    if state.outcome is not None and isinstance(state.outcome.exception(), _Unauthenticated):
        return 0.0
    return float(_backoff(state))


class StoreObserver(Protocol):
    def observe_store_request(self, operation: str, seconds: float, error: str | None) -> None:
        """One store call took ``seconds``; ``error`` names the failure kind, if any."""


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: Sequence[str] = ("127.0.0.1:2379",)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    # Hostname checked against the server certificate when endpoints are IPs.
    tls_server_name: str | None = None
    username: str | None = None
    password: str | None = None
    # Per attempt; a hung (paused) member costs at most this much per attempt.
    request_timeout: float = 3.0
    # Attempts for idempotent calls (reads, puts, deletes, lease grant/revoke).
    attempts: int = 3
    # The watch asks for a progress notification this often (first at once on
    # every new stream) and reconnects when the stream stays silent for
    # ``watch_idle_timeout``. Each answer is contact with etcd for the stale-read
    # check (``stale_read_limit``, at least 3 s): an idle watch hears from etcd
    # every second, and a silently dead stream (a paused or cut-off member) is
    # replaced after 3 s, before the limit refuses reads.
    watch_progress_interval: float = 1.0
    watch_idle_timeout: float = 3.0
    token_refresh_interval: float = 240.0


def _strip_scheme(endpoint: str) -> tuple[str, bool]:
    tls = endpoint.startswith("https://")
    for scheme in ("http://", "https://", "unix://"):
        if endpoint.startswith(scheme):
            endpoint = endpoint[len(scheme) :]
    return endpoint.rstrip("/"), tls


def _is_ipv4(host: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(host), ipaddress.IPv4Address)
    except ValueError:
        return False


def channel_target(endpoints: Sequence[str]) -> tuple[str, str | None, bool]:
    """(gRPC target, first hostname if any, TLS implied by an https:// scheme).

    gRPC balances over a list only with the ``ipv4:`` scheme, so hostnames are
    resolved once here (a hostname's later address change needs a restart).
    """
    if not endpoints:
        raise ValueError("no etcd endpoints")
    addresses: list[str] = []
    hostname: str | None = None
    any_tls = False
    for raw in endpoints:
        endpoint, tls = _strip_scheme(raw)
        any_tls = any_tls or tls
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"etcd endpoint must be host:port, got {raw!r}")
        if host == "localhost":
            host = "127.0.0.1"
        if not _is_ipv4(host):
            hostname = hostname or host
            if len(endpoints) == 1:
                return f"dns:///{host}:{port}", hostname, any_tls
            info = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)
            host = str(info[0][4][0])
        addresses.append(f"{host}:{port}")
    return "ipv4:" + ",".join(addresses), hostname, any_tls


# How long watches avoid a member on which a stream went silent.
SILENT_MEMBER_AVOIDED = 10.0


def next_member(start: int, count: int, silent_until: Mapping[int, float], now: float) -> int:
    """The member a watch stream goes to: ``start`` (mod ``count``) or the next
    one after it that no stream found silent lately; ``start`` when all were."""
    for step in range(count):
        member = (start + step) % count
        if silent_until.get(member, 0.0) <= now:
            return member
    return start % count


# Between two watch attempts on different members, before a whole round of
# members has failed.
NEXT_MEMBER_DELAY = 0.05


def watch_retry_delay(failures: int, members: int, backoff: float) -> tuple[float, float]:
    """How long a watch waits after its ``failures``-th failure in a row, and
    the backoff after that. It tries the next member almost at once, and backs
    off (doubling ``backoff`` up to 1 s) only when every member has failed
    since the last one that answered: after an outage the members that were
    down reconnect slowly (their channels' own backoff), and a watch pacing
    itself at 1 s per member stayed on them for seconds while the one that
    never went away already served (seen in the etcd quorum-loss chaos test:
    a proxy's cache stale for 1.4 s after quorum came back)."""
    if members > 1 and failures % members:
        return NEXT_MEMBER_DELAY, backoff
    return backoff, min(backoff * 2, 1.0)


def member_targets(target: str) -> list[str]:
    """One gRPC target per member of a balanced ``ipv4:a,b,c`` target."""
    if not target.startswith("ipv4:"):
        return [target]
    return [f"ipv4:{address}" for address in target[len("ipv4:") :].split(",")]


def _kv(pb: Any) -> KeyValue:
    return KeyValue(
        pb.key.decode("utf-8", "surrogateescape"),
        pb.value,
        pb.create_revision,
        pb.mod_revision,
        pb.version,
        pb.lease,
    )


def _range_result(pb: Any) -> RangeResult:
    return RangeResult(tuple(_kv(kv) for kv in pb.kvs), pb.header.revision, pb.more)


def _compare(compare: Compare) -> Any:
    pb = rpc_pb2.Compare(
        result=_COMPARE_RESULT[compare.op],
        target=_COMPARE_TARGET[compare.target],
        key=encode_key(compare.key),
    )
    operand = compare.operand
    if compare.target is CompareTarget.VALUE:
        pb.value = operand if isinstance(operand, bytes) else str(operand).encode()
    elif compare.target is CompareTarget.VERSION:
        pb.version = int(operand)
    elif compare.target is CompareTarget.CREATE:
        pb.create_revision = int(operand)
    elif compare.target is CompareTarget.MOD:
        pb.mod_revision = int(operand)
    else:
        pb.lease = int(operand)
    if compare.range_end is not None:
        pb.range_end = encode_key(compare.range_end)
    return pb


def _request_op(op: Op) -> Any:
    key = encode_key(op.key)
    end = encode_key(op.range_end) if op.range_end is not None else None
    if op.kind is OpKind.PUT:
        return KVService.txn_op_put(key, op.value, lease=op.lease)
    if op.kind is OpKind.DELETE:
        return KVService.txn_op_delete(key, range_end=end)
    return KVService.txn_op_get(key, range_end=end)


def _error_kind(exc: BaseException) -> str:
    """A short, bounded label for the errors counter."""
    if isinstance(exc, LeaseExpired):
        return "lease_expired"
    if isinstance(exc, Compacted):
        return "compacted"
    if isinstance(exc, TimeoutError | EtcdTransientError):
        return "timeout"
    if isinstance(exc, EtcdUnauthenticatedError):
        return "unauthenticated"
    if isinstance(exc, EtcdPermissionDeniedError):
        return "permission_denied"
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name.lower()
    return "unavailable"


class EtcdStore(Store):
    def __init__(self, config: EtcdConfig, *, observer: StoreObserver | None = None) -> None:
        self.config = config
        self.observer = observer
        target, hostname, tls_implied = channel_target(config.endpoints)
        self._options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", 5_000),
            ("grpc.keepalive_timeout_ms", 3_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
            # Faster reconnects to a restarted member than the 1 s..120 s default.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2_000),
        ]
        self._credentials: grpc.ChannelCredentials | None = None
        if config.ca_file or tls_implied:
            ca = Path(config.ca_file).read_bytes() if config.ca_file else None
            key = Path(config.key_file).read_bytes() if config.key_file else None
            cert = Path(config.cert_file).read_bytes() if config.cert_file else None
            self._credentials = grpc.ssl_channel_credentials(ca, key, cert)
            server_name = config.tls_server_name or hostname
            if server_name:
                self._options.append(("grpc.ssl_target_name_override", server_name))
        self._channel = self._open_channel(target, balanced=True)
        # Watches run on one channel per member (opened when first used), so
        # that a watch that goes silent moves to another member: on the
        # balanced channel a paused member's connection stays up until its
        # keep-alive fails (5 s + 3 s), and the re-opened stream can land on
        # it again, longer than ``stale_read_limit`` without word from etcd.
        members = member_targets(target)
        self._watch_targets = members if len(members) > 1 else []
        self._watch_channels: dict[int, tuple[grpc.aio.Channel, WatchStub]] = {}
        # Watches start spread over the members, from a random one: not every
        # proxy's first (repository) watch on the first member.
        self._watches_opened = random.randrange(len(self._watch_targets) or 1)
        # Members whose stream went silent, and until when (monotonic) watches
        # avoid them: while a paused leader is replaced, the others refuse
        # streams at once (no leader) and a watch moving on would come back.
        self._silent_until: dict[int, float] = {}
        # Our own retry loop decides what is safe to repeat, so etcd3aio's is off.
        self._kv = KVService(self._channel, max_attempts=1)
        self._lease = LeaseService(self._channel, max_attempts=1)
        self._maintenance = MaintenanceService(self._channel, max_attempts=1)
        self._auth = AuthService(self._channel, max_attempts=1)
        self._watch_stub = WatchStub(self._channel)
        self._token: str | None = None
        self._token_task: asyncio.Task[None] | None = None
        self._closed = False

    def _open_channel(self, target: str, *, balanced: bool) -> grpc.aio.Channel:
        options = [*self._options]
        if balanced:
            options.append(("grpc.lb_policy_name", "round_robin"))
        if self._credentials is not None:
            return grpc.aio.secure_channel(target, self._credentials, options=options)
        return grpc.aio.insecure_channel(target, options=options)

    def _watch_stream(self, member: int) -> WatchStub:
        """The watch stub of member ``member`` (an index; the balanced channel's
        with one member)."""
        if not self._watch_targets:
            return self._watch_stub
        opened = self._watch_channels.get(member)
        if opened is None:
            channel = self._open_channel(self._watch_targets[member], balanced=False)
            opened = self._watch_channels[member] = (channel, WatchStub(channel))
        return opened[1]

    # -- lifecycle --------------------------------------------------------------

    async def connect(self) -> EtcdStore:
        """Authenticate if configured; the channel itself connects lazily."""
        if self.config.username:
            await self._authenticate()
            self._token_task = asyncio.get_running_loop().create_task(self._refresh_token())
        return self

    async def __aenter__(self) -> EtcdStore:
        return await self.connect()

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._token_task is not None:
            self._token_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._token_task
        for channel, _ in self._watch_channels.values():
            await channel.close()
        await self._channel.close()

    async def _authenticate(self) -> None:
        assert self.config.username is not None
        try:
            response = await self._auth.authenticate(
                self.config.username,
                self.config.password or "",
                timeout=self.config.request_timeout,
            )
        except (EtcdError, grpc.aio.AioRpcError, TimeoutError) as exc:
            raise StoreUnavailable(
                f"etcd authentication as {self.config.username!r} failed: {exc}"
            ) from exc
        self._token = response.token
        for service in (self._kv, self._lease, self._maintenance):
            service.set_token(self._token)

    async def _refresh_token(self) -> None:
        await run_periodically(
            self._authenticate,
            self.config.token_refresh_interval,
            delay_first=True,
            errors=(Exception,),
            on_error=lambda exc: log.warning("etcd token refresh failed: %s", exc),
        )

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        # hasleader: a member cut off from the raft leader cancels our watch
        # instead of silently delivering nothing.
        md: tuple[tuple[str, str], ...] = (("hasleader", "true"),)
        if self._token:
            md += (("token", self._token),)
        return md

    # -- call wrapper -----------------------------------------------------------

    def _wrap(self, exc: BaseException, operation: str) -> StoreUnavailable:
        if isinstance(exc, StoreUnavailable):
            return exc
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, grpc.aio.AioRpcError):
            cause = cause.__cause__
        if isinstance(cause, grpc.aio.AioRpcError):
            details = cause.details() or ""
            if cause.code() == grpc.StatusCode.NOT_FOUND and "lease" in details:
                return LeaseExpired(f"etcd {operation}: {details}")
            if cause.code() == grpc.StatusCode.OUT_OF_RANGE and "compacted" in details:
                return Compacted(f"etcd {operation}: {details}")
            return StoreUnavailable(f"etcd {operation}: {cause.code().name} {details}")
        if isinstance(exc, TimeoutError):
            return StoreUnavailable(
                f"etcd {operation}: timed out after {self.config.request_timeout}s"
            )
        return StoreUnavailable(f"etcd {operation}: {exc}")

    async def _call(self, operation: str, fn: Callable[[], Awaitable[T]], *, idempotent: bool) -> T:
        if self._closed:
            raise StoreUnavailable("etcd store closed")
        started = time.perf_counter()
        error: str | None = None

        async def attempt() -> T:
            nonlocal error
            try:
                async with asyncio.timeout(self.config.request_timeout):
                    return await fn()
            except EtcdUnauthenticatedError as exc:
                error = "unauthenticated"
                raise _Unauthenticated(str(self._wrap(exc, operation))) from exc
            except (
                EtcdConnectionError,
                EtcdTransientError,
                EtcdPermissionDeniedError,
                EtcdError,
                grpc.aio.AioRpcError,
                TimeoutError,
                StoreUnavailable,
            ) as exc:
                wrapped = self._wrap(exc, operation)
                error = _error_kind(
                    wrapped if isinstance(wrapped, LeaseExpired | Compacted) else exc
                )
                raise wrapped from exc

        def retryable(exc: BaseException) -> bool:
            # A rejected token is worth another try only with a new one.
            if isinstance(exc, _Unauthenticated):
                return bool(self.config.username)
            return transient(exc)

        async def before_retry(state: RetryCallState) -> None:
            if state.outcome is not None and isinstance(
                state.outcome.exception(), _Unauthenticated
            ):
                await self._authenticate()

        # A txn is sent once: its outcome after a failure is unknown and the caller decides.
        policy = StoreRetry(
            attempts=max(1, self.config.attempts) if idempotent else 1,
            wait=_retry_wait,
            retry_on=retryable,
            before_retry=before_retry,
        )
        try:
            return await policy(attempt)
        finally:
            if self.observer is not None:
                self.observer.observe_store_request(operation, time.perf_counter() - started, error)

    # -- Store ----------------------------------------------------------------------

    async def range(
        self,
        key: str,
        *,
        prefix: bool = False,
        range_end: str | None = None,
        revision: int = 0,
        limit: int = 0,
    ) -> RangeResult:
        end = prefix_end(key) if prefix else range_end
        timeout = self.config.request_timeout

        async def call() -> RangeResult:
            response = await self._kv.get(
                encode_key(key),
                encode_key(end) if end is not None else None,
                revision=revision,
                limit=limit,
                timeout=timeout,
            )
            return _range_result(response)

        return await self._call("range", call, idempotent=True)

    async def put(self, key: str, value: bytes, *, lease: int = 0) -> int:
        timeout = self.config.request_timeout

        async def call() -> int:
            response = await self._kv.put(encode_key(key), value, lease=lease, timeout=timeout)
            return int(response.header.revision)

        # Repeating a put writes the same value again: harmless.
        return await self._call("put", call, idempotent=True)

    async def delete(self, key: str, *, prefix: bool = False) -> int:
        timeout = self.config.request_timeout
        end = encode_key(prefix_end(key)) if prefix else None

        async def call() -> int:
            response = await self._kv.delete(encode_key(key), end, timeout=timeout)
            return int(response.deleted)

        return await self._call("delete", call, idempotent=True)

    async def txn(
        self,
        compares: Sequence[Compare],
        success: Sequence[Op],
        failure: Sequence[Op] = (),
    ) -> TxnResult:
        timeout = self.config.request_timeout
        pb_compares = [_compare(c) for c in compares]
        pb_success = [_request_op(op) for op in success]
        pb_failure = [_request_op(op) for op in failure]

        async def call() -> TxnResult:
            response = await self._kv.txn(pb_compares, pb_success, pb_failure, timeout=timeout)
            ops = success if response.succeeded else failure
            revision = int(response.header.revision)
            results: list[RangeResult | int] = []
            for op, pb in zip(ops, response.responses, strict=True):
                if op.kind is OpKind.GET:
                    results.append(_range_result(pb.response_range))
                elif op.kind is OpKind.DELETE:
                    results.append(int(pb.response_delete_range.deleted))
                else:
                    results.append(revision)
            return TxnResult(bool(response.succeeded), revision, tuple(results))

        return await self._call("txn", call, idempotent=False)

    async def grant(self, ttl: float) -> Lease:
        timeout = self.config.request_timeout
        seconds = max(1, int(-(-ttl // 1)))  # etcd TTLs are whole seconds; round up

        async def call() -> Lease:
            response = await self._lease.grant(seconds, timeout=timeout)
            if response.error:
                raise StoreUnavailable(f"etcd lease grant: {response.error}")
            return Lease(int(response.ID), float(response.TTL))

        # A retried grant may leave an unused lease behind; it expires on its own.
        return await self._call("lease_grant", call, idempotent=True)

    async def keep_alive(self, lease_id: int) -> float:
        timeout = self.config.request_timeout

        async def call() -> float:
            stream = self._lease.keep_alive(lease_id)
            try:
                async with asyncio.timeout(timeout):
                    response = await stream.read()
            finally:
                stream.cancel()
            if response is grpc.aio.EOF:
                raise StoreUnavailable("etcd lease keep-alive: stream closed")
            if response.TTL <= 0:
                raise LeaseExpired(f"lease {lease_id:x} expired")
            return float(response.TTL)

        return await self._call("lease_keepalive", call, idempotent=False)

    async def revoke(self, lease_id: int) -> None:
        timeout = self.config.request_timeout

        async def call() -> None:
            try:
                await self._lease.revoke(lease_id, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                # Already gone (expired, or an earlier attempt went through).
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise

        await self._call("lease_revoke", call, idempotent=True)

    async def time_to_live(self, lease_id: int) -> float:
        timeout = self.config.request_timeout

        async def call() -> float:
            response = await self._lease.time_to_live(lease_id, timeout=timeout)
            return float(response.TTL)

        return await self._call("lease_ttl", call, idempotent=True)

    async def compact(self, revision: int) -> None:
        timeout = self.config.request_timeout

        async def call() -> None:
            try:
                await self._kv.compact(revision, physical=True, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                # Compacting an already compacted revision is a no-op for us.
                if exc.code() != grpc.StatusCode.OUT_OF_RANGE:
                    raise

        await self._call("compact", call, idempotent=True)

    async def status(self) -> dict[str, int | str]:
        """The contacted member's status (db size, leader, raft index)."""
        timeout = self.config.request_timeout

        async def call() -> dict[str, int | str]:
            response = await self._maintenance.status(timeout=timeout)
            return {
                "version": response.version,
                "db_size": int(response.dbSize),
                "db_size_in_use": int(getattr(response, "dbSizeInUse", 0)),
                "leader": int(response.leader),
                "raft_index": int(response.raftIndex),
                "revision": int(response.header.revision),
            }

        return await self._call("status", call, idempotent=True)

    async def watch(
        self, key: str, *, prefix: bool = False, start_revision: int
    ) -> AsyncIterator[WatchBatch]:
        raw_key = encode_key(key)
        raw_end = encode_key(prefix_end(key)) if prefix else b""
        next_revision = start_revision
        backoff = 0.05
        failures = 0
        # Watches start spread over the members; each moves to the next member
        # whenever its stream fails, ends or stays silent.
        member = self._watches_opened
        self._watches_opened += 1
        while not self._closed:
            if self._watch_targets:
                member = next_member(
                    member, len(self._watch_targets), self._silent_until, time.monotonic()
                )
            requests: asyncio.Queue[Any] = asyncio.Queue()
            requests.put_nowait(
                rpc_pb2.WatchRequest(
                    create_request=rpc_pb2.WatchCreateRequest(
                        key=raw_key, range_end=raw_end, start_revision=next_revision
                    )
                )
            )

            async def request_stream(queue: asyncio.Queue[Any] = requests) -> AsyncIterator[Any]:
                while True:
                    item = await queue.get()
                    if item is None:
                        return
                    yield item

            call = self._watch_stream(member).Watch(request_stream(), metadata=self._metadata())
            pinger = asyncio.get_running_loop().create_task(self._ask_progress(requests))
            try:
                while True:
                    async with asyncio.timeout(self.config.watch_idle_timeout):
                        response = await call.read()
                    if response is grpc.aio.EOF:
                        log.info("etcd watch on %s: stream ended; reconnecting", key)
                        break
                    if response.compact_revision:
                        yield WatchBatch((), int(response.compact_revision), compacted=True)
                        return
                    if response.canceled:
                        log.info(
                            "etcd watch on %s cancelled by server: %s", key, response.cancel_reason
                        )
                        break
                    backoff, failures = 0.05, 0
                    if response.created:
                        if not next_revision:
                            next_revision = int(response.header.revision) + 1
                        continue
                    if response.events:
                        events = tuple(
                            WatchEvent(
                                EventType.DELETE if ev.type == 1 else EventType.PUT, _kv(ev.kv)
                            )
                            for ev in response.events
                        )
                        last = events[-1].kv.mod_revision
                        next_revision = last + 1
                        yield WatchBatch(events, last)
                    else:
                        # Progress notification: a liveness signal. Its header
                        # revision is not trusted as a resume point (some etcd
                        # 3.4 releases could send it ahead of pending events).
                        yield WatchBatch((), next_revision - 1)
            except (grpc.aio.AioRpcError, TimeoutError) as exc:
                if isinstance(exc, TimeoutError):
                    self._silent_until[member] = time.monotonic() + SILENT_MEMBER_AVOIDED
                log.info(
                    "etcd watch on %s interrupted (%s); resuming at %d", key, exc, next_revision
                )
            finally:
                pinger.cancel()
                requests.put_nowait(None)
                call.cancel()
            member += 1
            failures += 1
            delay, backoff = watch_retry_delay(failures, len(self._watch_targets), backoff)
            await asyncio.sleep(delay)

    async def _ask_progress(self, requests: asyncio.Queue[Any]) -> None:
        async def ask() -> None:
            requests.put_nowait(
                rpc_pb2.WatchRequest(progress_request=rpc_pb2.WatchProgressRequest())
            )

        await run_periodically(ask, self.config.watch_progress_interval, delay_first=False)
