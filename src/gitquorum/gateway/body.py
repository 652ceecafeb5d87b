"""Read a request body as bounded chunks, decompressing as it arrives.

git gzips upload-pack requests between 1 KiB and ``http.postBuffer``; a
push is sent as is, in chunked transfer encoding when large. Neither is ever
held whole: each chunk read from the socket is inflated with a bounded
output size, so a small, highly compressed body cannot balloon in memory.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Protocol

DEFAULT_CHUNK = 64 * 1024


class BodyError(ValueError):
    """The request body cannot be decoded (HTTP 400)."""


class UnsupportedEncoding(ValueError):
    """A Content-Encoding the gateway does not decode (HTTP 415)."""


class Reader(Protocol):
    """What the gateway needs of ``aiohttp.StreamReader``."""

    async def read(self, n: int = -1) -> bytes: ...


def _decompressor(encoding: str) -> zlib._Decompress | None:
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return None
    if name in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if name == "deflate":
        return zlib.decompressobj()
    raise UnsupportedEncoding(f"unsupported Content-Encoding: {encoding!r}")


def check_encoding(encoding: str) -> None:
    """Raise UnsupportedEncoding before any of the body is read."""
    _decompressor(encoding)


async def chunks(
    reader: Reader, encoding: str = "", size: int = DEFAULT_CHUNK
) -> AsyncIterator[bytes]:
    """The decoded body, in non-empty chunks of at most ``size`` bytes."""
    inflater = _decompressor(encoding)
    while True:
        raw = await reader.read(size)
        if not raw:
            break
        if inflater is None:
            yield raw
            continue
        if inflater.eof:
            raise BodyError(f"data after the end of the {encoding} body")
        data = raw
        while data:
            try:
                out = inflater.decompress(data, size)
            except zlib.error as exc:
                raise BodyError(f"corrupt {encoding} body: {exc}") from None
            if out:
                yield out
            data = inflater.unconsumed_tail
        if inflater.unused_data:
            raise BodyError(f"data after the end of the {encoding} body")
    if inflater is not None:
        # All input was consumed above, so what zlib still holds is at most
        # the tail of one symbol: a few hundred bytes.
        rest = inflater.flush()
        if not inflater.eof:
            raise BodyError(f"truncated {encoding} body")
        for offset in range(0, len(rest), size):
            yield rest[offset : offset + size]
