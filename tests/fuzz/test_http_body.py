"""The gateway's own byte handling: pkt-line framing and request-body decoding.

``pktline`` frames what the gateway writes itself (ERR packets): always a
valid pkt-line whatever the message. ``body.chunks`` inflates gzip/deflate
bodies chunk by chunk: random and corrupted bodies end in ``BodyError`` (HTTP
400), valid ones round-trip, and no chunk is ever larger than asked for — a
small body that inflates hugely cannot balloon in memory.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from gitquorum.gateway import body, pktline

SETTINGS = settings(max_examples=200, deadline=None)


def _parse_pkt(data: bytes) -> list[bytes]:
    """A strict pkt-line reader (the format git expects)."""
    packets = []
    while data:
        length = int(data[:4], 16)
        assert length == 0 or 4 <= length <= 65520
        packets.append(data[4:length] if length else b"")
        data = data[length if length else 4 :]
    return packets


@SETTINGS
@given(message=st.text(max_size=70000))
def test_error_line_is_one_valid_pkt_line(message: str) -> None:
    frame = pktline.error_line(message)
    [payload] = _parse_pkt(frame)
    assert payload.startswith(b"ERR ") and payload.endswith(b"\n")
    assert b"\n" not in payload[:-1]  # one line: git prints it as the remote error


@SETTINGS
@given(payload=st.binary(max_size=70000))
def test_pkt_line_frames_or_refuses(payload: bytes) -> None:
    try:
        frame = pktline.pkt_line(payload)
    except ValueError:
        assert len(payload) > pktline.MAX_PAYLOAD
        return
    assert _parse_pkt(frame) == [payload]


class _Reader:
    """An aiohttp-like stream delivering ``data`` in the given piece sizes."""

    def __init__(self, data: bytes, pieces: list[int]) -> None:
        self.data = data
        self.pieces = pieces or [len(data) or 1]
        self.turn = 0

    async def read(self, n: int = -1) -> bytes:
        size = self.pieces[self.turn % len(self.pieces)]
        self.turn += 1
        size = min(size, n) if n > 0 else size
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


async def _collect(reader: _Reader, encoding: str, size: int) -> bytes:
    out = []
    async for chunk in body.chunks(reader, encoding, size):
        assert 0 < len(chunk) <= size
        out.append(chunk)
    return b"".join(out)


# One loop for every example: starting a loop per example costs more than the work.
_LOOP = asyncio.new_event_loop()


def _decode(data: bytes, encoding: str, pieces: list[int], size: int) -> bytes | None:
    try:
        return _LOOP.run_until_complete(
            asyncio.wait_for(_collect(_Reader(data, pieces), encoding, size), 10)
        )
    except body.BodyError as exc:
        assert str(exc)
        return None


pieces = st.lists(st.integers(1, 5000), max_size=4)
sizes = st.sampled_from([1, 7, 1024, 65536])


@SETTINGS
@given(
    data=st.binary(max_size=20000),
    encoding=st.sampled_from(["gzip", "x-gzip", "deflate", "", "identity"]),
    pieces=pieces,
    size=sizes,
)
def test_random_bodies_decode_or_fail_cleanly(
    data: bytes, encoding: str, pieces: list[int], size: int
) -> None:
    decoded = _decode(data, encoding, pieces, size)
    if encoding in ("", "identity"):
        assert decoded == data


@SETTINGS
@given(
    data=st.binary(max_size=20000),
    encoding=st.sampled_from(["gzip", "deflate"]),
    pieces=pieces,
    size=sizes,
    damage=st.one_of(
        st.none(),
        st.tuples(
            st.sampled_from(["flip", "cut", "append"]),
            st.integers(0, 10**6),
            st.binary(min_size=1, max_size=8),
        ),
    ),
)
def test_compressed_bodies_round_trip_and_damage_is_a_body_error(
    data: bytes,
    encoding: str,
    pieces: list[int],
    size: int,
    damage: tuple[str, int, bytes] | None,
) -> None:
    compressed = bytearray(gzip.compress(data) if encoding == "gzip" else zlib.compress(data))
    if damage is None:
        assert _decode(bytes(compressed), encoding, pieces, size) == data
        return
    action, where, extra = damage
    where %= len(compressed)
    if action == "flip":
        compressed[where] ^= extra[0] or 1
    elif action == "cut":
        del compressed[where:]
    else:
        compressed += extra
    decoded = _decode(bytes(compressed), encoding, pieces, size)
    # Damage is either refused or (a flip in a header byte gzip ignores) harmless.
    assert decoded is None or decoded == data


def test_a_decompression_bomb_streams_in_bounded_chunks() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB from ~64 KiB
    assert len(bomb) < 100_000

    async def largest() -> int:
        biggest = total = 0
        async for chunk in body.chunks(_Reader(bomb, [4096]), "gzip", 65536):
            biggest = max(biggest, len(chunk))
            total += len(chunk)
        assert total == 64 * 1024 * 1024
        return biggest

    assert asyncio.run(largest()) <= 65536
