"""Finishing an RPC, the same on every server: its status, its log line, its metrics.

The node's interceptor and the proxy's raw-bytes handler both end each call
here: an exception becomes a status (``status_of``), the call is counted in
``gitquorum_rpc_*`` and gets one log line whose level depends only on the
method and the status code (``log_level``). A write whose outcome is unknown
ends, on the proxy and on the nodes alike, with ``OutcomeUnknown``.

On the proxy, what a client reads is also decided here (``public_status``): a
failure of the cluster's insides (a node's transport error, an etcd error, a
crash) becomes a short message with the call's correlation id, and the details
go to the call's log line under the same id.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Sequence
from types import TracebackType

import grpc

from gitquorum import log
from gitquorum.errors import GitquorumError, Unavailable, grpc_status
from gitquorum.metrics import RpcMetrics
from gitquorum.wire.registry import MethodInfo, Op

logger = log.get("gitquorum.rpc")

HEALTH_PREFIX = "/grpc.health.v1.Health/"
# Outcomes of a call that went as the client asked, or failed because of the
# client's own request or departure: routine, logged at info. Every other code
# (UNAVAILABLE, INTERNAL, RESOURCE_EXHAUSTED, ...) says the service could not
# serve the call and is logged at warning, so that it shows at that level.
ROUTINE_CODES = frozenset({"OK", "NOT_FOUND", "INVALID_ARGUMENT", "ALREADY_EXISTS", "CANCELLED"})

# A write that may or may not have been applied gets exactly this code and a
# message starting with this prefix, wherever its outcome is unknown (see
# docs/failover.md, "Honest answers"). UNAVAILABLE is gRPC's code that makes no
# claim about what the server did ("there is no guarantee that the server has
# not seen anything"); FAILED_PRECONDITION, ABORTED, INVALID_ARGUMENT and the
# like say the operation was refused, which a client may take as "not applied".
OUTCOME_UNKNOWN_CODE = grpc.StatusCode.UNAVAILABLE
OUTCOME_UNKNOWN_PREFIX = "outcome unknown: "


class OutcomeUnknown(Unavailable):
    """A write that some replica may have applied: never answered with a definite failure.

    The message is ``outcome unknown: <reason> (correlation id <id>)``; the
    correlation id finds the write's log lines on the proxy and the nodes.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        correlation = log.correlation_id.get()
        suffix = f" (correlation id {correlation})" if correlation else ""
        super().__init__(f"{OUTCOME_UNKNOWN_PREFIX}{reason}{suffix}")


def is_outcome_unknown(code: grpc.StatusCode | None, details: str) -> bool:
    """Whether a status already says the outcome is unknown (a node's, relayed)."""
    return code is OUTCOME_UNKNOWN_CODE and details.startswith(OUTCOME_UNKNOWN_PREFIX)


class BackendError(Exception):
    """A node answered with a non-OK status; relayed to the client unchanged."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status a call that raised ``exc`` ends with."""
    if isinstance(exc, BackendError):
        if exc.code is grpc.StatusCode.CANCELLED and exc.details in ("", "CANCELLED"):
            # Cancelled by the node with no reason of its own (its own
            # cancellations say why): gRPC does that to calls in flight when a
            # node stops. The client did not cancel: to it, the node went away
            # mid-call, which UNAVAILABLE says (and clients retry).
            return grpc.StatusCode.UNAVAILABLE, "node stopped during the call"
        return exc.code, exc.details
    return grpc_status(exc)


# What a client of the proxy reads instead of the cluster's insides (node
# addresses, grpc transport messages, exception text); the details are on the
# call's log line with the same correlation id.
STORAGE_UNAVAILABLE = "storage temporarily unavailable"
INTERNAL_ERROR = "internal error"
_CORRELATION_MARK = "correlation id "


# What a client reads of a node's "outcome unknown" (its own reason is logged).
NODE_OUTCOME_UNKNOWN = "the primary node may have applied the write"


class Source(enum.Enum):
    """Where a failed call's status came from: it decides what the client may read."""

    NODE = "node"  # relayed from a node, or made by grpc on the way to it
    CLUSTER_STATE = "cluster-state"  # etcd could not be reached or refused
    PROXY = "proxy"  # the proxy's own refusal, in its own words
    CRASH = "crash"  # an unexpected exception


def source_of(exc: BaseException) -> Source:
    if isinstance(exc, BackendError):
        return Source.NODE
    if isinstance(exc, GitquorumError) and not exc.for_clients:
        return Source.CLUSTER_STATE
    if isinstance(exc, GitquorumError | NotImplementedError):
        return Source.PROXY
    return Source.CRASH


def with_correlation(message: str, correlation: str) -> str:
    return f"{message}, correlation id {correlation}" if correlation else message


def public_status(
    code: grpc.StatusCode, details: str, source: Source, correlation: str
) -> tuple[grpc.StatusCode, str]:
    """The status a client of the proxy gets (pure; table in tests/unit/wire).

    * INTERNAL and UNKNOWN, whatever their source: "internal error, correlation id …".
    * UNAVAILABLE that says "outcome unknown: " keeps the prefix (a documented
      contract) and the correlation id; the proxy's own reason is kept, a
      node's is replaced by a fixed one (it may quote addresses or paths).
    * UNAVAILABLE from a node (a refused connection, a reset, a node going
      away, the node's own unavailability) or from etcd: "storage temporarily
      unavailable, correlation id …".
    * The proxy's own UNAVAILABLE ("repository … is unavailable: …", "cluster
      state is stale …", a drain) keeps its words and gets the correlation id.
    * Every other status is the node's or the proxy's answer about the request
      (NOT_FOUND, INVALID_ARGUMENT with git's message, …): unchanged.
    """
    if code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        return code, with_correlation(INTERNAL_ERROR, correlation)
    if code is grpc.StatusCode.UNAVAILABLE and details.startswith(OUTCOME_UNKNOWN_PREFIX):
        if source is Source.PROXY:
            return code, details
        # A node's reason quotes grpc's or git's text (addresses, paths): the
        # contract (prefix, correlation id) is kept, the reason goes to the log.
        return code, with_correlation(OUTCOME_UNKNOWN_PREFIX + NODE_OUTCOME_UNKNOWN, correlation)
    if code is not grpc.StatusCode.UNAVAILABLE:
        return code, details
    if source is Source.PROXY:
        if _CORRELATION_MARK in details or not correlation:
            return code, details
        return code, f"{details} (correlation id {correlation})"
    return code, with_correlation(STORAGE_UNAVAILABLE, correlation)


def shown_to_client(details: str) -> bool:
    """Whether a proxy's message was made for clients (it carries a correlation id):
    a gateway shows those as they are and replaces anything else."""
    return _CORRELATION_MARK in details


def log_level(method: str, code: str) -> int:
    """One level per (method, code): routine outcomes at info, failures at warning."""
    if method.startswith(HEALTH_PREFIX) and code == "OK":
        # Probed every second by every proxy: not worth a line each.
        return logging.DEBUG
    return logging.INFO if code in ROUTINE_CODES else logging.WARNING


def op_label(info: MethodInfo | None) -> str:
    """The ``op_type`` label of a method: empty for methods without an op type."""
    if info is None or info.op is Op.INTERCEPTED:
        return ""
    return info.op.value


def is_abort(exc: BaseException) -> bool:
    # context.abort raises a plain Exception subclass internal to grpc.aio.
    return type(exc).__name__ == "AbortError"


def _code_name(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    if isinstance(code, grpc.StatusCode):
        return code.name
    return str(code)


class RpcCall:
    """One call from start to finish: ``async with`` around the handler's work.

    An exception leaving the block is mapped to a status and the call aborted
    with it; a handler's own abort or ``set_code`` is kept. On the way out the
    call is counted and logged, with ``fields`` (which the handler may extend,
    e.g. with its routing decision) on the log line.
    """

    def __init__(
        self,
        method: str,
        op_type: str,
        context: grpc.aio.ServicerContext,
        metadata: Sequence[tuple[str, str | bytes]] | None,
        metrics: RpcMetrics | None,
        *,
        public: bool = False,
        log_after: bool = False,
    ) -> None:
        self.method = method
        # The proxy: failures reach clients through ``public_status``.
        self.public = public
        # Write the log line on the event loop's next turn, once grpc has the
        # answer to send: formatting and writing it is then off the call's path.
        self.log_after = log_after
        self.op_type = op_type
        self.context = context
        self.metadata = metadata
        self.metrics = metrics
        self.fields: dict[str, object] = {"method": method, "op_type": op_type}
        self._code: str | None = None
        self._error: BaseException | None = None
        self._started = 0.0

    async def __aenter__(self) -> RpcCall:
        self.begin()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc is not None:
                await self.fail(exc)
        finally:
            self.finish()

    # ``begin``, ``fail`` and ``finish`` are the context manager's halves, for a
    # hot path that spares the two coroutines of ``async with`` (the proxy's
    # unary calls): ``begin(); try: ... except BaseException as exc: await
    # fail(exc); raise; finally: finish()``.

    def begin(self) -> None:
        log.correlation_id.set(log.correlation_from_metadata(self.metadata))
        self._started = time.perf_counter()

    async def fail(self, exc: BaseException) -> None:
        """Map ``exc`` to the call's status and abort with it (raises), unless
        the handler aborted itself or the call was cancelled (returns)."""
        if is_abort(exc):
            return
        if isinstance(exc, asyncio.CancelledError | GeneratorExit):
            # The client went away (or the drain's grace ran out): the
            # context still says nothing, which would count it as OK.
            self._code = "CANCELLED"
            return
        status, details = status_of(exc)
        self._code, self._error = status.name, exc
        if self.public:
            shown = public_status(status, details, source_of(exc), log.correlation_id.get())[1]
            if shown != details:
                # What the client no longer reads is on the log line, same id.
                self.fields["error_details"] = details
            details = shown
        await self.context.abort(status, details)

    def finish(self) -> None:
        code = self._code or _code_name(self.context)
        elapsed = time.perf_counter() - self._started
        if self.metrics is not None:
            self.metrics.observe(self.method, self.op_type, code, elapsed)
        self.fields.update(code=code, duration_ms=round(elapsed * 1000, 2))
        level = log_level(self.method, code)
        if not logger.isEnabledFor(level):
            return
        if self.log_after:
            # The callback runs in a copy of this context: same correlation id.
            asyncio.get_running_loop().call_soon(self._log, level, code)
        else:
            self._log(level, code)

    def _log(self, level: int, code: str) -> None:
        message = "rpc finished" if level < logging.WARNING else "rpc failed"
        if code == "INTERNAL":
            logger.log(level, message, extra={"fields": self.fields}, exc_info=self._error)
        else:
            log.emit(logger, level, message, self.fields)
