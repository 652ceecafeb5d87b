"""The few pkt-line frames the gateway writes itself."""

from __future__ import annotations

FLUSH = b"0000"
# git's LARGE_PACKET_MAX minus the four length bytes.
MAX_PAYLOAD = 65516


def pkt_line(payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"pkt-line payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return b"%04x" % (len(payload) + 4) + payload


def error_line(message: str) -> bytes:
    """An ``ERR`` packet: git stops and prints ``remote error: <message>``.

    Used when a ref advertisement fails after its headers went out, so the
    HTTP status can no longer say it.
    """
    text = " ".join(message.split())
    return pkt_line(f"ERR {text}".encode()[: MAX_PAYLOAD - 1] + b"\n")
