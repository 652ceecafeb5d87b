"""The gateway's pure pieces: path parsing, body inflation, credentials, status mapping."""

from __future__ import annotations

import base64
import gzip
import zlib
from pathlib import Path

import grpc
import pytest

from gitquorum import tokens
from gitquorum.errors import PermissionDenied, Unauthenticated
from gitquorum.gateway import body, paths, pktline, status
from gitquorum.gateway.credentials import Credentials


@pytest.mark.parametrize(
    ("raw", "relative", "endpoint"),
    [
        ("/group/project.git/info/refs", "group/project.git", paths.Endpoint.INFO_REFS),
        ("/project/git-upload-pack", "project", paths.Endpoint.UPLOAD_PACK),
        ("/a/b/c.git/git-receive-pack", "a/b/c.git", paths.Endpoint.RECEIVE_PACK),
        ("/with%20space.git/info/refs", "with space.git", paths.Endpoint.INFO_REFS),
        ("/sub%2Fdir.git/info/refs", "sub/dir.git", paths.Endpoint.INFO_REFS),
        ("/caf%C3%A9.git/info/refs", "café.git", paths.Endpoint.INFO_REFS),
        ("/..git/info/refs", "..git", paths.Endpoint.INFO_REFS),
    ],
)
def test_paths_name_the_repository_as_given(
    raw: str, relative: str, endpoint: paths.Endpoint
) -> None:
    assert paths.parse(raw) == paths.Target(relative, endpoint)


@pytest.mark.parametrize(
    "raw",
    [
        "/info/refs",
        "//info/refs",
        "/../x.git/info/refs",
        "/x/%2E%2e/y/info/refs",
        "/x/./y/info/refs",
        "/x%00y/info/refs",
        "/x%0ay/info/refs",
        "//abs.git/info/refs",
        "/%2fabs.git/info/refs",
        "/trailing/%2F/info/refs",
        "/%c3%28.git/info/refs",
        "/" + "a" * 5000 + "/info/refs",
    ],
)
def test_bad_paths_are_refused(raw: str) -> None:
    with pytest.raises(paths.InvalidPath):
        paths.parse(raw)


@pytest.mark.parametrize("raw", ["/", "/x.git/HEAD", "/x.git/objects/info/packs", "/metrics"])
def test_other_urls_are_no_endpoint(raw: str) -> None:
    with pytest.raises(paths.UnknownEndpoint):
        paths.parse(raw)


class _Reader:
    """Serves bytes in reads of a fixed size, like a socket would."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data = memoryview(data)
        self.step = step
        self.offset = 0

    async def read(self, n: int = -1) -> bytes:
        size = min(self.step, n if n > 0 else self.step)
        chunk = bytes(self.data[self.offset : self.offset + size])
        self.offset += len(chunk)
        return chunk


async def _collect(reader: _Reader, encoding: str, size: int) -> list[bytes]:
    return [chunk async for chunk in body.chunks(reader, encoding, size)]


@pytest.mark.parametrize("step", [1, 7, 4096, 1 << 20])
async def test_gzip_is_inflated_in_bounded_chunks(step: int) -> None:
    data = bytes(range(256)) * 40 + b"\0" * 100_000
    for encoding, compressed in (
        ("gzip", gzip.compress(data)),
        ("x-gzip", gzip.compress(data)),
        ("deflate", zlib.compress(data)),
        ("", data[: 20 * step]),
    ):
        expected = data[: 20 * step] if not encoding else data
        chunks = await _collect(_Reader(compressed, step), encoding, 8192)
        assert b"".join(chunks) == expected
        assert all(0 < len(chunk) <= 8192 for chunk in chunks)


async def test_a_gzip_bomb_never_inflates_more_than_a_chunk_at_once() -> None:
    # 16 MiB of zeros compress to ~16 KiB: less than one socket read.
    bomb = gzip.compress(b"\0" * (16 << 20), compresslevel=9)
    assert len(bomb) < 65536
    largest = total = 0
    async for chunk in body.chunks(_Reader(bomb, 1 << 20), "gzip", 65536):
        largest = max(largest, len(chunk))
        total += len(chunk)
    assert total == 16 << 20
    assert largest <= 65536


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        (b"\x1f\x8bnot gzip at all", "corrupt gzip body"),
        (gzip.compress(b"hello" * 100)[:-12], "truncated gzip body"),
        (gzip.compress(b"hello") + b"x", "after the end"),
        (gzip.compress(b"hello") + gzip.compress(b"again"), "after the end"),
    ],
)
async def test_broken_gzip_bodies_fail(encoded: bytes, message: str) -> None:
    with pytest.raises(body.BodyError, match=message):
        await _collect(_Reader(encoded, 3), "gzip", 1024)


def test_unknown_encodings_are_refused_before_reading() -> None:
    for encoding in ("br", "compress", "gzip, br"):
        with pytest.raises(body.UnsupportedEncoding):
            body.check_encoding(encoding)
    for encoding in ("", "identity", "GZIP", " gzip ", "deflate"):
        body.check_encoding(encoding)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_credentials_from_a_token_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# comment\n\n  writer-secret  \nreader-secret read-only\n")
    credentials = Credentials.load(path)

    identity = credentials.authorize(_basic("ada", "writer-secret"), push=True)
    assert (identity.username, identity.can_push) == ("ada", True)
    # Passwords may hold colons; only the first one separates the user.
    assert not credentials.authenticate(_basic("bob", "reader-secret")).can_push
    assert credentials.authenticate("Bearer writer-secret").can_push
    assert credentials.authenticate("bearer  writer-secret ").can_push
    assert credentials.authenticate(tokens.bearer(b"reader-secret")[1]).username == ""
    with pytest.raises(PermissionDenied):
        credentials.authorize(_basic("bob", "reader-secret"), push=True)
    for header in (
        None,
        "",
        _basic("ada", "wrong"),
        _basic("ada", "writer-secret-and-more"),
        "Basic !!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Bearer ",
        "Bearer wrong",
        "Bearer " + tokens.v2_token(b"writer-secret", now=0),
        "Digest writer-secret",
        "writer-secret",
    ):
        with pytest.raises(Unauthenticated):
            credentials.authenticate(header)


@pytest.mark.parametrize(
    "text", ["", "# only a comment\n", "secret read-write\n", "secret read-only extra\n"]
)
def test_malformed_token_files_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ValueError):
        Credentials.load(path)


@pytest.mark.parametrize(
    ("code", "http"),
    [
        (grpc.StatusCode.NOT_FOUND, 404),
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.UNAUTHENTICATED, 401),
        (grpc.StatusCode.PERMISSION_DENIED, 403),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.INTERNAL, 500),
        (grpc.StatusCode.UNKNOWN, 500),
    ],
)
def test_grpc_codes_map_to_http_statuses(code: grpc.StatusCode, http: int) -> None:
    assert status.http_status(code) == http


def test_status_text_names_the_repository() -> None:
    text = status.describe(grpc.StatusCode.NOT_FOUND, "repository\nnot found", "g/p.git", "vs")
    assert text == "gitquorum: repository 'g/p.git' not found on virtual storage 'vs' " + (
        "(repository not found)"
    )


def test_error_packet() -> None:
    assert pktline.error_line("no\nway") == b"000fERR no way\n"
    assert len(pktline.error_line("x" * 100_000)) == 65520
    with pytest.raises(ValueError):
        pktline.pkt_line(b"x" * 65517)
