"""The transaction metadata codec, from the proxy's encoding to the node's decoding."""

from __future__ import annotations

import base64
import json

import pytest

from gitquorum.errors import InvalidArgument
from gitquorum.wire.transaction_metadata import (
    SERVER_KEY,
    TRANSACTION_KEY,
    Transaction,
    encode_metadata,
    transaction_from_metadata,
)


def b64(value: object) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


SERVER = b64({"listen_addr": "tcp://127.0.0.1:1", "token": "t"})


@pytest.mark.parametrize(
    "tx",
    [
        Transaction(1, "node-a", True, "tcp://127.0.0.1:9999", "secret"),
        Transaction(0, "n", False, "tls://proxy:1"),
        Transaction(2**40, "ünïcode", False, "unix:///run/p.sock", ""),
    ],
)
def test_round_trip(tx: Transaction) -> None:
    metadata = encode_metadata(tx)
    assert [key for key, _ in metadata] == [TRANSACTION_KEY, SERVER_KEY]
    assert transaction_from_metadata(metadata) == tx
    assert transaction_from_metadata([("other", "x"), *metadata]) == tx


@pytest.mark.parametrize("metadata", [None, [], [("authorization", "Bearer x")]])
def test_no_transaction(metadata: list[tuple[str, str]] | None) -> None:
    assert transaction_from_metadata(metadata) is None


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([(TRANSACTION_KEY, "%%%")], f"{TRANSACTION_KEY} metadata is not base64 JSON"),
        ([(TRANSACTION_KEY, b64([1]))], f"{TRANSACTION_KEY} metadata is not a JSON object"),
        (
            [(TRANSACTION_KEY, b64({"id": 1, "node": "n", "primary": True}))],
            f"{TRANSACTION_KEY} given without {SERVER_KEY}",
        ),
        (
            [(TRANSACTION_KEY, b64({"id": 1, "node": "n", "primary": True})), (SERVER_KEY, "!")],
            f"{SERVER_KEY} metadata is not base64 JSON",
        ),
        (
            [
                (TRANSACTION_KEY, b64({"id": -1, "node": "n", "primary": True})),
                (SERVER_KEY, SERVER),
            ],
            "transaction id must be a non-negative integer",
        ),
        (
            [
                (TRANSACTION_KEY, b64({"id": True, "node": "n", "primary": True})),
                (SERVER_KEY, SERVER),
            ],
            "transaction id must be a non-negative integer",
        ),
        (
            [(TRANSACTION_KEY, b64({"id": 1, "node": "", "primary": True})), (SERVER_KEY, SERVER)],
            "transaction needs a node name and a primary flag",
        ),
        (
            [(TRANSACTION_KEY, b64({"id": 1, "node": "n", "primary": 1})), (SERVER_KEY, SERVER)],
            "transaction needs a node name and a primary flag",
        ),
        (
            [
                (TRANSACTION_KEY, b64({"id": 1, "node": "n", "primary": True})),
                (SERVER_KEY, b64({"token": "t"})),
            ],
            "praefect server needs listen_addr and token",
        ),
        (
            [
                (TRANSACTION_KEY, b64({"id": 1, "node": "n", "primary": True})),
                (SERVER_KEY, b64({"listen_addr": "tcp://x:1", "token": 5})),
            ],
            "praefect server needs listen_addr and token",
        ),
    ],
)
def test_malformed_metadata(metadata: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        transaction_from_metadata(metadata)
    assert exc.value.message == message


def test_the_token_stays_out_of_repr() -> None:
    assert "secret" not in repr(Transaction(1, "n", True, "tcp://x:1", "secret"))
