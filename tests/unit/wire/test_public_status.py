"""What a client of the proxy reads when a call fails: the table of ``public_status``.

Node addresses, grpc transport text, etcd errors and exception text never
reach a client; they get a short message with the correlation id, and the
details go to the proxy's log line under the same id.
"""

from __future__ import annotations

import grpc
import pytest

from gitquorum import errors
from gitquorum.cluster.errors import StoreUnavailable
from gitquorum.gateway import status as gateway_status
from gitquorum.storage.pack import Exit, is_bad_request
from gitquorum.wire.finishing import (
    BackendError,
    OutcomeUnknown,
    Source,
    public_status,
    shown_to_client,
    source_of,
)

Code = grpc.StatusCode
ID = "c0ffee"
REFUSED = (
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:56577: "
    "Failed to connect to remote host: Connection refused"
)
GONE = "storage temporarily unavailable, correlation id c0ffee"
CRASHED = "internal error, correlation id c0ffee"
STALE = "cluster state is stale: no contact with etcd for 6s"
BAD_PUSH = "invalid push request: fatal: protocol error: bad line length 12"
MOVED = "reference does not point to expected object"
UNKNOWN_OUTCOME = "outcome unknown: the primary failed (UNAVAILABLE) (correlation id c0ffee)"

# (code, details, source) -> what the client reads
TABLE = [
    # A node that cannot be reached, resets, or goes away: no address, no grpc text.
    (Code.UNAVAILABLE, REFUSED, Source.NODE, GONE),
    (Code.UNAVAILABLE, "node stopped during the call", Source.NODE, GONE),
    (Code.UNAVAILABLE, "Socket closed", Source.NODE, GONE),
    # etcd's client text names the cluster's insides too.
    (Code.UNAVAILABLE, "etcd 127.0.0.1:2379: refused", Source.CLUSTER_STATE, GONE),
    # The documented unknown-outcome contract is kept as it is.
    # A node's own reason may quote addresses or paths: a fixed one, same contract.
    (
        Code.UNAVAILABLE,
        UNKNOWN_OUTCOME,
        Source.NODE,
        "outcome unknown: the primary node may have applied the write, correlation id c0ffee",
    ),
    (Code.UNAVAILABLE, UNKNOWN_OUTCOME, Source.PROXY, UNKNOWN_OUTCOME),
    # The proxy's own words stay, with the correlation id.
    (Code.UNAVAILABLE, STALE, Source.PROXY, f"{STALE} (correlation id c0ffee)"),
    # Crashes and INTERNAL from anywhere: exception and git text stay in the log.
    (Code.INTERNAL, "internal error: KeyError: 'node2'", Source.CRASH, CRASHED),
    (Code.INTERNAL, "cmd wait: exit status 128", Source.NODE, CRASHED),
    (Code.UNKNOWN, "Unexpected error", Source.NODE, CRASHED),
    # Answers about the request itself are relayed unchanged.
    (Code.INVALID_ARGUMENT, BAD_PUSH, Source.NODE, BAD_PUSH),
    (Code.NOT_FOUND, "repository not found", Source.PROXY, "repository not found"),
    (Code.FAILED_PRECONDITION, MOVED, Source.NODE, MOVED),
    (Code.RESOURCE_EXHAUSTED, "too many requests", Source.PROXY, "too many requests"),
    (Code.DEADLINE_EXCEEDED, "Deadline Exceeded", Source.NODE, "Deadline Exceeded"),
]  # fmt: skip


@pytest.mark.parametrize(("code", "details", "source", "shown"), TABLE)
def test_public_status(code: Code, details: str, source: Source, shown: str) -> None:
    assert public_status(code, details, source, ID) == (code, shown)


def test_without_a_correlation_id_nothing_is_appended() -> None:
    assert public_status(Code.UNAVAILABLE, REFUSED, Source.NODE, "") == (
        Code.UNAVAILABLE,
        "storage temporarily unavailable",
    )


@pytest.mark.parametrize(
    ("exc", "source"),
    [
        (BackendError(Code.UNAVAILABLE, REFUSED), Source.NODE),
        (StoreUnavailable("etcd down"), Source.CLUSTER_STATE),
        (errors.Unavailable("repository unavailable: ..."), Source.PROXY),
        (OutcomeUnknown("the write could not be recorded"), Source.PROXY),
        (errors.NotFound("repository not found"), Source.PROXY),
        (NotImplementedError(), Source.PROXY),
        (KeyError("node2"), Source.CRASH),
    ],
)
def test_source_of(exc: BaseException, source: Source) -> None:
    assert source_of(exc) is source


@pytest.mark.parametrize(
    ("stderr", "bad"),
    [
        ("fatal: protocol error: bad line length character: \ufffd\ufffd", True),
        ("fatal: protocol error: bad line length 3", True),
        ("fatal: protocol error: expected old/new/ref, got 'x'", True),
        ("fatal: git upload-pack: protocol error, expected to get object ID, not 'x'", True),
        ("fatal: git upload-pack: not our ref 1234", True),
        ("fatal: unable to create temporary object directory", False),
        ("error: unable to write file: No space left on device", False),
        ("", False),
    ],
)
def test_bad_requests_are_told_from_node_failures(stderr: str, bad: bool) -> None:
    assert is_bad_request(stderr) is bad
    error = Exit(128, stderr.encode()).error("push")
    assert error.code is (Code.INVALID_ARGUMENT if bad else Code.INTERNAL)
    if bad:
        # git's own words, without the exit status.
        assert error.message == f"invalid push request: {stderr}"


@pytest.mark.parametrize(
    ("code", "details", "hidden", "http", "retry_after"),
    [
        # The gateway's own grpc error towards the proxy: its address stays out.
        (Code.UNAVAILABLE, REFUSED, True, 503, "1"),
        # A proxy message made for clients is shown as it is.
        (Code.UNAVAILABLE, GONE, False, 503, "1"),
        (Code.UNAVAILABLE, UNKNOWN_OUTCOME, False, 503, "1"),
        (Code.INTERNAL, "disk on fire", True, 500, None),
        (Code.INVALID_ARGUMENT, "invalid push request: fatal: protocol error", False, 400, None),
        (Code.NOT_FOUND, "repository not found", False, 404, None),
        (Code.OK, "", False, 200, None),
    ],
)  # fmt: skip
def test_gateway_statuses(
    code: Code, details: str, hidden: bool, http: int, retry_after: str | None
) -> None:
    assert gateway_status.hides_details(code, details) is hidden
    assert shown_to_client(details) is ("correlation id" in details)
    assert gateway_status.http_status(code) == http
    assert gateway_status.headers(code).get("Retry-After") == retry_after
    text = gateway_status.describe(code, details, "a/b.git", "default")
    assert ("127.0.0.1" in text) is False
    assert (details in text) is (not hidden or not details)
