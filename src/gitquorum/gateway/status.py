"""gRPC status codes of the backend as HTTP statuses and lines git shows.

git prints the body of a ``text/plain`` error response to a ref
advertisement as ``remote: ...`` lines, so the text names the repository and
the cause the way ``gitquorum git-ssh`` does.
"""

from __future__ import annotations

import grpc

from gitquorum import log
from gitquorum.wire.finishing import (
    INTERNAL_ERROR,
    STORAGE_UNAVAILABLE,
    shown_to_client,
    with_correlation,
)

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


# Failover takes under a second: a client may come back this soon.
RETRY_AFTER_S = 1


def http_status(code: grpc.StatusCode) -> int:
    if code == grpc.StatusCode.OK:
        return 200
    return _HTTP_STATUS.get(code, 500)


def headers(code: grpc.StatusCode) -> dict[str, str]:
    """Extra response headers for a failure: when to try again, for a 503."""
    if http_status(code) == 503:
        return {"Retry-After": str(RETRY_AFTER_S)}
    return {}


def hides_details(code: grpc.StatusCode, details: str) -> bool:
    """Whether the client reads a short message instead of ``details``: an
    unavailable or crashed backend whose message was not made for clients (the
    gateway's own grpc errors name the proxy's address; a proxy's messages for
    clients carry the correlation id)."""
    return code in _HIDDEN and not shown_to_client(details)


_HIDDEN = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)


def describe(code: grpc.StatusCode, details: str, relative_path: str, storage: str) -> str:
    """One line for the user: what failed, in git's words where it has some."""
    details = " ".join((details or "").split())
    if hides_details(code, details):
        if code != grpc.StatusCode.UNAVAILABLE:
            return f"gitquorum: {with_correlation(INTERNAL_ERROR, log.correlation_id.get())}"
        details = with_correlation(STORAGE_UNAVAILABLE, log.correlation_id.get())
    if code == grpc.StatusCode.NOT_FOUND:
        return (
            f"gitquorum: repository '{relative_path}' not found "
            f"on virtual storage '{storage}' ({details})"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"gitquorum: service unavailable, try again later ({details})"
    if code == grpc.StatusCode.OK:
        # Never an error: a caller that got here has a bug, not the client.
        return "gitquorum: ok"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"gitquorum: the storage did not answer in time ({details})"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return f"gitquorum: the gateway was refused by the proxy ({details})"
    return f"gitquorum: {code.name.lower()}: {details}"
