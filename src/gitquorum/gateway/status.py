"""gRPC status codes of the backend as HTTP statuses and lines git shows.

git prints the body of a ``text/plain`` error response to a ref
advertisement as ``remote: ...`` lines, so the text names the repository and
the cause the way ``gitquorum git-ssh`` does.
"""

from __future__ import annotations

import grpc

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


def http_status(code: grpc.StatusCode) -> int:
    return _HTTP_STATUS.get(code, 500)


def describe(code: grpc.StatusCode, details: str, relative_path: str, storage: str) -> str:
    """One line for the user: what failed, in git's words where it has some."""
    details = " ".join((details or "").split())
    if code == grpc.StatusCode.NOT_FOUND:
        return (
            f"gitquorum: repository '{relative_path}' not found "
            f"on virtual storage '{storage}' ({details})"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"gitquorum: service unavailable, try again later ({details})"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"gitquorum: the storage did not answer in time ({details})"
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return f"gitquorum: the gateway was refused by the proxy ({details})"
    return f"gitquorum: {code.name.lower()}: {details}"
