"""One exception hierarchy, one mapping to gRPC status codes."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from gitquorum import errors
from gitquorum.errors import GitquorumError, grpc_status

EXPECTED: dict[type[GitquorumError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
    errors.Canceled: grpc.StatusCode.CANCELLED,
    errors.Internal: grpc.StatusCode.INTERNAL,
}


def all_subclasses(cls: type[GitquorumError]) -> set[type[GitquorumError]]:
    found: set[type[GitquorumError]] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *all_subclasses(sub)}
    return found


@pytest.mark.parametrize("cls", list(EXPECTED), ids=lambda c: c.__name__)
def test_subclass_maps_to_its_code(cls: type[GitquorumError]) -> None:
    exc = cls("something specific")
    assert exc.code == EXPECTED[cls]
    assert grpc_status(exc) == (EXPECTED[cls], "something specific")
    assert exc.message == "something specific"
    assert str(exc) == "something specific"


def test_every_subclass_is_covered_and_distinct() -> None:
    # Subclasses defined elsewhere in the package (e.g. cluster errors) must also
    # carry a real status code; the core ones must map one to one.
    import gitquorum.cluster.errors  # noqa: F401 - registers its subclasses

    for cls in all_subclasses(GitquorumError):
        assert isinstance(cls.code, grpc.StatusCode), cls
    core = {c for c in all_subclasses(GitquorumError) if c.__module__ == "gitquorum.errors"}
    assert core - {errors.ConfigError} == set(EXPECTED)
    assert len(set(EXPECTED.values())) == len(EXPECTED)


def test_base_class_is_internal() -> None:
    assert grpc_status(GitquorumError("boom")) == (grpc.StatusCode.INTERNAL, "boom")


def test_config_error_lists_every_problem() -> None:
    exc = errors.ConfigError(["listen: required", "storages.0.path: expected an absolute path"])
    code, message = grpc_status(exc)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == "listen: required; storages.0.path: expected an absolute path"
    assert exc.problems == ["listen: required", "storages.0.path: expected an absolute path"]


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad value"),
        KeyError("k"),
        RuntimeError("x"),
        OSError(5, "io"),
        ZeroDivisionError(),
    ],
)
def test_unknown_exceptions_are_internal(exc: Exception) -> None:
    code, message = grpc_status(exc)
    assert code == grpc.StatusCode.INTERNAL
    assert message.startswith(f"internal error: {type(exc).__name__}")


def test_not_implemented_is_unimplemented() -> None:
    assert grpc_status(NotImplementedError("later")) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "method not implemented",
    )


class _FakeContext:
    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise asyncio.CancelledError  # grpc.aio raises its own AbortError here


async def test_abort_with_uses_the_mapping() -> None:
    context = _FakeContext()
    with pytest.raises(asyncio.CancelledError):
        await errors.abort_with(context, errors.NotFound("repository not found"))  # type: ignore[arg-type]
    assert context.aborted == (grpc.StatusCode.NOT_FOUND, "repository not found")


def test_a_long_message_is_cut_to_fit_a_trailer() -> None:
    """A message quoting a huge request field would make the client refuse the
    trailer (grpc's metadata limit) instead of reading the status: it is cut
    by its encoded size, keeping its start and its end (a correlation id)."""
    message = "revision not found: " + "x" * 2_000_000 + " (correlation id abc)"
    code, shown = grpc_status(errors.InvalidArgument(message))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert shown.startswith("revision not found: xxx")
    assert shown.endswith("xxx (correlation id abc)")
    cut = len(message) - errors.MAX_DETAILS
    assert f"… ({cut} bytes cut) …" in shown
    assert len(shown.encode()) < errors.MAX_DETAILS + 64
    _, internal = grpc_status(ValueError("y" * 100_000))
    assert internal.startswith("internal error: ValueError: yyy")
    assert len(internal.encode()) < errors.MAX_DETAILS + 64
    # A message that fits is untouched.
    short = "x" * errors.MAX_DETAILS
    assert grpc_status(errors.NotFound(short)) == (grpc.StatusCode.NOT_FOUND, short)


@pytest.mark.parametrize("char", ["é", "中", "😀", "\udcff", "\ud800"])
def test_a_message_of_wide_characters_is_cut_by_its_bytes(char: str) -> None:
    """Percent-encoded, each byte beyond ASCII takes three: counting characters
    would let 2048 four-byte ones through as 24 KiB, over every client's limit."""
    _, shown = grpc_status(errors.InvalidArgument("bad: " + char * 100_000))
    assert shown.startswith("bad: ")
    assert " bytes cut) " in shown
    assert len(shown.encode(errors="surrogatepass")) < errors.MAX_DETAILS + 64
    # Cut on character boundaries: whatever is kept is whole characters.
    assert set(shown[len("bad: ") : shown.index("…")]) <= {char}
