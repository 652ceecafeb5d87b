"""Hostile HTTP through a real gateway in front of a real node.

Random methods, URL paths (traversals, percent- and double-encoding, Unicode
look-alikes), headers (content types, encodings, Git-Protocol, request ids,
credentials) and bodies (random bytes, pkt-line streams with valid and broken
framing, gzip that is valid, truncated or lying about its encoding) go to the
gateway with aiohttp. Every answer must be a 2xx, 4xx or 5xx with a text
reason, within a time bound; afterwards the gateway and node still serve,
nothing was created outside the node's storage root and no per-call git
process is left behind.
"""

from __future__ import annotations

import gzip
import os
import string
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from gitquorum.gateway.http import GatewayConfig, GatewayServer
from gitquorum.gitaly import shared_pb2
from tests.fuzz.background import LoopThread
from tests.fuzz.strategies import url_paths
from tests.harness import gitrepo
from tests.harness.node import NodeProcess, wait_for
from tests.integration.limits import procs

SEEDED = "fuzz/seeded.git"
TIMEOUT = 30.0


@dataclass
class Setup:
    base: Path
    root: Path
    node: NodeProcess
    loop: LoopThread
    gateway: GatewayServer
    session: aiohttp.ClientSession
    oids: list[str]
    outside: set[str]


def _tree(base: Path, skip: tuple[Path, ...]) -> set[str]:
    """Every path under ``base`` except inside ``skip`` (as strings, for set arithmetic)."""
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d not in skip]
        found.update(str(here / name) for name in [*dirnames, *filenames])
    return found


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("gateway-fuzz")
    root = base / "root" / "storage"
    root.mkdir(parents=True)
    # Bait next to the storage: a traversal that worked would write here.
    (base / "root" / "outside").mkdir()
    (root / "link").symlink_to(base / "root" / "outside")
    node = NodeProcess("default", root, base / "logs").start()
    loop = LoopThread()
    source = gitrepo.make_repo(base / "source", commits=3)
    (base / "scratch").mkdir()

    async def start() -> tuple[GatewayServer, aiohttp.ClientSession]:
        async with grpc.aio.insecure_channel(node.address) as channel:
            await gitrepo.seed(
                channel,
                shared_pb2.Repository(storage_name="default", relative_path=SEEDED),
                source,
                base / "scratch",
            )
        gateway = GatewayServer(
            GatewayConfig(proxy=node.address, storage="default", create_on_push=True, timeout=20)
        )
        await gateway.start()
        return gateway, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))

    gateway, session = loop.run(start())
    oids = sorted(set(gitrepo.refs(source).values()))
    outside = _tree(base, skip=(root, base / "logs"))
    yield Setup(base, root, node, loop, gateway, session, oids, outside)

    async def stop() -> None:
        await session.close()
        await gateway.close()

    loop.run(stop())
    loop.close()
    node.terminate()


def pkt(payload: bytes) -> bytes:
    return b"%04x" % (len(payload) + 4) + payload


@st.composite
def pkt_bodies(draw: st.DrawFn, oids: list[str]) -> bytes:
    oid = st.one_of(
        st.sampled_from(oids),
        st.text("0123456789abcdef", min_size=0, max_size=41),
        st.just("0" * 40),
    )
    line = st.one_of(
        st.binary(max_size=80).map(pkt),
        st.sampled_from([b"0000", b"0001", b"0002", b"0003", b"0004", b"ffff", b"zzzz", b"00"]),
        oid.map(lambda o: pkt(f"want {o}\n".encode())),
        oid.map(lambda o: pkt(f"have {o}\n".encode())),
        st.just(pkt(b"done\n")),
        st.just(pkt(b"command=ls-refs\n")),
        st.tuples(
            oid, oid, st.sampled_from(["refs/heads/main", "refs/heads/x", "HEAD", "../x"])
        ).map(lambda t: pkt(f"{t[0]} {t[1]} {t[2]}\0report-status\n".encode())),
    )
    return b"".join(draw(st.lists(line, max_size=8)))


@st.composite
def requests(draw: st.DrawFn, oids: list[str]) -> dict[str, object]:
    repository = draw(
        st.one_of(
            st.just("/" + SEEDED),
            st.just("/fuzz/new-" + draw(st.text(string.ascii_lowercase, min_size=1, max_size=6))),
            url_paths().map(lambda p: p.rsplit("/", 1)[0] if p.count("/") > 1 else p),
        )
    )
    # Mostly well-shaped calls (so the hostile parts reach git), sometimes anything.
    shape = draw(st.sampled_from(["info-refs", "upload", "receive", "anything"]))
    endpoint, method, service = {
        "info-refs": ("/info/refs", "GET", "git-upload-pack"),
        "upload": ("/git-upload-pack", "POST", ""),
        "receive": ("/git-receive-pack", "POST", ""),
        "anything": ("", "", ""),
    }[shape]
    if shape == "info-refs":
        service = draw(st.sampled_from(["git-upload-pack", "git-receive-pack", "", "../"]))
    if shape == "anything":
        endpoint = draw(st.sampled_from(["/info/refs", "/git-upload-pack", "/HEAD", ""]))
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]))
        service = draw(st.sampled_from(["git-upload-pack", "git-receive-pack", "", "git-x"]))
    headers: dict[str, str] = {}
    if method == "POST" and draw(st.booleans()):
        headers["Content-Type"] = f"application/x-git-{shape}-pack-request"
    printable = st.text(string.printable.strip() + " ", max_size=40)
    for name, choices in (
        (
            "Content-Type",
            [
                "application/x-git-upload-pack-request",
                "application/x-git-receive-pack-request",
                "text/plain",
            ],
        ),
        ("Content-Encoding", ["gzip", "deflate", "identity", "br", "gzip, gzip"]),
        ("Git-Protocol", ["version=2", "version=1", "version=2:object-format=sha1"]),
        ("X-Request-Id", ["fuzz-1", "../../etc"]),
        ("Authorization", ["Basic Zm9vOmJhcg==", "Bearer x", "Basic !!!"]),
    ):
        if name in headers or draw(st.booleans()):
            continue
        value = draw(st.one_of(st.sampled_from(choices), printable))
        headers[name] = value
    body = draw(st.one_of(pkt_bodies(oids), st.binary(max_size=300)))
    wrap = draw(st.sampled_from(["raw", "raw", "gzip", "truncated-gzip"]))
    if wrap == "gzip":
        body = gzip.compress(body)
        if draw(st.booleans()):
            headers["Content-Encoding"] = "gzip"
    elif wrap == "truncated-gzip":
        body = gzip.compress(body)[: draw(st.integers(0, 20))]
    # Percent-encode what HTTP cannot carry raw, keep the client's own escapes.
    raw = quote(repository + endpoint, safe="/%:@!$&'()*+,;=-._~")
    query = f"?service={quote(service)}" if service else ""
    return {"method": method, "url": raw + query, "headers": headers, "body": body}


async def _send(setup: Setup, request: dict[str, object]) -> tuple[int, str, bytes, bool]:
    url = URL(f"{setup.gateway.url}{request['url']}", encoded=True)
    async with setup.session.request(
        str(request["method"]),
        url,
        headers=request["headers"],  # type: ignore[arg-type]
        data=request["body"],
        allow_redirects=False,
    ) as response:
        cut = False
        try:
            body = await response.read()
        except aiohttp.ClientPayloadError:
            # The gateway cuts a response whose 200 status is already out.
            body, cut = b"", True
        return response.status, response.headers.get("Content-Type", ""), body, cut


def test_hostile_requests_get_clear_answers(setup: Setup) -> None:
    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request=requests(setup.oids))
    def one(request: dict[str, object]) -> None:
        status, content_type, body, cut = setup.loop.run(_send(setup, request), TIMEOUT + 5)
        seen[status] = seen.get(status, 0) + 1
        assert 200 <= status < 600 and not 300 <= status < 400, (request, status)
        if cut:
            assert status == 200, (request, status)
        if status >= 400 and request["method"] != "HEAD":
            # A reason a person (or git, which prints it) can read.
            assert content_type.startswith("text/plain"), (request, status, content_type)
            assert body.strip(), (request, status)
            body.decode("utf-8")

    seen: dict[int, int] = {}
    one()
    print("statuses seen:", dict(sorted(seen.items())))
    # The requests reached the node (answers from git) as well as the gateway's checks.
    assert 200 in seen and any(400 <= s < 500 for s in seen), seen
    _assert_still_healthy(setup)


async def _raw(setup: Setup, data: bytes) -> bytes:
    import asyncio

    reader, writer = await asyncio.open_connection("127.0.0.1", setup.gateway.port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(TIMEOUT):
            # The status line is enough (the connection may stay open: keep-alive).
            return await reader.readline()
    finally:
        writer.close()


@pytest.mark.parametrize(
    "data",
    [
        b"GET /../../etc/passwd/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a/%2e%2e/%2e%2e/x/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a%c0%ae%c0%ae/info/refs?service=git-upload-pack HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /" + b"a" * 70000 + b"/info/refs HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /x.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: 99999999999999999999\r\n\r\n",
        b"POST /x.git/git-upload-pack HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on a plain port
        b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 5000 + b"\r\n",
    ],
    ids=[
        "dotdot",
        "encoded-dotdot",
        "overlong-utf8",
        "long-path",
        "huge-length",
        "bad-chunk",
        "tls-hello",
        "many-headers",
    ],
)
def test_malformed_http_is_refused(setup: Setup, data: bytes) -> None:
    answer = setup.loop.run(_raw(setup, data), TIMEOUT + 5)
    if answer:  # aiohttp may also just close a connection that is not HTTP at all
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:200]
    _assert_still_healthy(setup)


def _assert_still_healthy(setup: Setup) -> None:
    async def refs() -> int:
        url = f"{setup.gateway.url}/{SEEDED}/info/refs?service=git-upload-pack"
        async with setup.session.get(url) as response:
            await response.read()
            return response.status

    assert setup.loop.run(refs()) == 200
    assert setup.node.alive()
    # Nothing appeared outside the storage root (the bait directory included) ...
    now = _tree(setup.base, skip=(setup.root, setup.base / "logs"))
    assert now - setup.outside == set(), now - setup.outside
    assert not any((setup.base / "root" / "outside").iterdir())
    # ... every directory inside it really is inside it ...
    real_root = os.path.realpath(setup.root)
    for dirpath, dirnames, _ in os.walk(setup.root):
        for name in dirnames:
            assert os.path.realpath(Path(dirpath) / name).startswith(real_root + os.sep) or (
                Path(dirpath) / name == setup.root / "link"
            )
    # ... and no git process of a finished call lives on.
    assert setup.node.proc is not None
    pid = setup.node.proc.pid
    wait_for(lambda: not procs.git_processes(pid), 15, 0.1, "per-call git processes to exit")
