"""The transaction metadata a proxy gives each node of a write, and its codec.

A mutator routed through the proxy carries two metadata entries:
``gitaly-reference-transaction`` (base64 JSON ``{id, node, primary}``) and
``gitaly-praefect-server`` (base64 JSON ``{listen_addr, token}``: where the
node sends its votes). The proxy encodes them, the node decodes them; both
name vote phases with the same constants.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from gitquorum.errors import InvalidArgument
from gitquorum.gitaly import transaction_pb2

TRANSACTION_KEY = "gitaly-reference-transaction"
SERVER_KEY = "gitaly-praefect-server"
PREPARED = transaction_pb2.VoteTransactionRequest.PREPARED_PHASE
COMMITTED = transaction_pb2.VoteTransactionRequest.COMMITTED_PHASE


@dataclass(frozen=True)
class Transaction:
    """A transaction one node takes part in, and where to send its votes."""

    id: int
    node: str
    primary: bool
    proxy_address: str
    token: str = field(repr=False, default="")


def _b64json(value: str | bytes, key: str) -> dict[str, object]:
    try:
        raw = base64.b64decode(value, validate=True)
        decoded = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(f"{key} metadata is not base64 JSON") from exc
    if not isinstance(decoded, dict):
        raise InvalidArgument(f"{key} metadata is not a JSON object")
    return decoded


def encode_metadata(tx: Transaction) -> list[tuple[str, str]]:
    """The metadata a proxy attaches for one node (used by the proxy and tests)."""
    info = json.dumps({"id": tx.id, "node": tx.node, "primary": tx.primary})
    server = json.dumps({"listen_addr": tx.proxy_address, "token": tx.token})
    return [
        (TRANSACTION_KEY, base64.b64encode(info.encode()).decode()),
        (SERVER_KEY, base64.b64encode(server.encode()).decode()),
    ]


def transaction_from_metadata(
    metadata: Sequence[tuple[str, str | bytes]] | None,
) -> Transaction | None:
    """The call's transaction; None for a call outside any (not routed as a mutator)."""
    values = {k: v for k, v in metadata or ()}
    raw_tx = values.get(TRANSACTION_KEY)
    if raw_tx is None:
        return None
    info = _b64json(raw_tx, TRANSACTION_KEY)
    raw_server = values.get(SERVER_KEY)
    if raw_server is None:
        raise InvalidArgument(f"{TRANSACTION_KEY} given without {SERVER_KEY}")
    server = _b64json(raw_server, SERVER_KEY)
    tx_id, node, primary = info.get("id"), info.get("node"), info.get("primary")
    address, token = server.get("listen_addr"), server.get("token", "")
    if not isinstance(tx_id, int) or isinstance(tx_id, bool) or tx_id < 0:
        raise InvalidArgument("transaction id must be a non-negative integer")
    if not isinstance(node, str) or not node or not isinstance(primary, bool):
        raise InvalidArgument("transaction needs a node name and a primary flag")
    if not isinstance(address, str) or not address or not isinstance(token, str):
        raise InvalidArgument("praefect server needs listen_addr and token")
    return Transaction(tx_id, node, primary, address, token)
