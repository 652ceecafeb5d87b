"""One exception hierarchy, mapped to gRPC status codes in one place.

Domain code raises these; only the server edge (``grpc_status``/``abort_with``)
turns them into RPC statuses, so services never call ``context.abort`` with a
hand-picked code.
"""

from __future__ import annotations

from typing import NoReturn

import grpc


class GitquorumError(Exception):
    """Base of every error that has a defined gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    # False: the message names the cluster's insides (etcd endpoints, grpc
    # transport text); the proxy shows clients a short message instead.
    for_clients: bool = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(GitquorumError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(GitquorumError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(GitquorumError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(GitquorumError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(GitquorumError):
    code = grpc.StatusCode.ABORTED


class Unavailable(GitquorumError):
    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(GitquorumError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(GitquorumError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(GitquorumError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(GitquorumError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(GitquorumError):
    code = grpc.StatusCode.UNIMPLEMENTED


class DataLoss(GitquorumError):
    code = grpc.StatusCode.DATA_LOSS


class Canceled(GitquorumError):
    code = grpc.StatusCode.CANCELLED


class Internal(GitquorumError):
    code = grpc.StatusCode.INTERNAL


class ConfigError(GitquorumError):
    """Invalid configuration; ``problems`` lists every one with its dotted path."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


# The longest status message sent, in UTF-8 bytes. It travels in a trailer,
# percent-encoded beyond ASCII (up to three times as long), and a client
# refuses trailers over its metadata limit (grpc's C core: 8 KiB soft, 16 KiB
# hard; grpc-java: 8 KiB) with a RESOURCE_EXHAUSTED of its own instead of the
# real status: a message quoting a huge request field (a 2 MiB revision) must
# be cut to reach the client at all.
MAX_DETAILS = 2048
# What a cut message keeps of its end: the correlation id some messages end with.
_KEPT_TAIL = 256


def bounded(message: str) -> str:
    """``message`` cut to about ``MAX_DETAILS`` bytes: its start, a mark saying
    how much was cut, and its end."""
    raw = message.encode(errors="surrogatepass")
    if len(raw) <= MAX_DETAILS:
        return message
    head = raw[: MAX_DETAILS - _KEPT_TAIL].decode(errors="ignore")
    tail = raw[-_KEPT_TAIL:].decode(errors="ignore")
    cut = len(raw) - MAX_DETAILS
    return f"{head}… ({cut} bytes cut) …{tail}"


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status an exception maps to; unknown exceptions are INTERNAL."""
    if isinstance(exc, GitquorumError):
        return exc.code, bounded(exc.message)
    if isinstance(exc, NotImplementedError):
        return grpc.StatusCode.UNIMPLEMENTED, "method not implemented"
    return grpc.StatusCode.INTERNAL, bounded(f"internal error: {type(exc).__name__}: {exc}")


async def abort_with(context: grpc.aio.ServicerContext, exc: BaseException) -> NoReturn:
    code, message = grpc_status(exc)
    await context.abort(code, message)
    raise AssertionError("unreachable")  # context.abort always raises
