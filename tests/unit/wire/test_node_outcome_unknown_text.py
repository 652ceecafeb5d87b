"""A node's own "outcome unknown" is relayed to clients with the node's words.

``public_status`` keeps every UNAVAILABLE that starts with "outcome unknown: "
as it is, whatever its source. The nodes build such messages from grpc's text
(``storage/voting.py``: "transaction vote failed: UNAVAILABLE: <grpc details>",
which names the proxy's vote address) and from git's stderr
(``storage/refupdate.py``: lock files under the node's storage path). The
proxy's fan-out relays the node's status as is (``fanout.py``: "the node's own
'outcome unknown': relayed as is"), so the client reads them.
"""

from __future__ import annotations

import grpc

from gitquorum import log
from gitquorum.gateway import status as gateway_status
from gitquorum.wire.finishing import (
    OUTCOME_UNKNOWN_PREFIX,
    OutcomeUnknown,
    Source,
    public_status,
)

ID = "c0ffee"
VOTE_REFUSED = (
    "transaction vote failed: UNAVAILABLE: failed to connect to all addresses; "
    "last error: UNKNOWN: ipv4:10.1.2.3:2305: Failed to connect to remote host: "
    "Connection refused"
)
GIT_LOCK = (
    "committing the reference update failed: error: cannot lock ref 'refs/heads/main': "
    "Unable to create '/var/lib/gitquorum/node2/@cluster/repositories/7a/1c/42.git/"
    "refs/heads/main.lock': File exists."
)


def _node_message(reason: str) -> str:
    """What the node's OutcomeUnknown says, with the forwarded correlation id."""
    token = log.correlation_id.set(ID)
    try:
        return OutcomeUnknown(reason).message
    finally:
        log.correlation_id.reset(token)


def test_a_nodes_outcome_unknown_does_not_carry_grpc_text_or_addresses() -> None:
    details = _node_message(f"the update is applied on this node; {VOTE_REFUSED}")
    code, shown = public_status(grpc.StatusCode.UNAVAILABLE, details, Source.NODE, ID)
    assert code is grpc.StatusCode.UNAVAILABLE
    assert shown.startswith(OUTCOME_UNKNOWN_PREFIX)  # the contract is kept
    assert ID in shown
    assert "10.1.2.3" not in shown
    assert "failed to connect to all addresses" not in shown


def test_a_nodes_outcome_unknown_does_not_carry_its_storage_paths() -> None:
    details = _node_message(GIT_LOCK)
    _, shown = public_status(grpc.StatusCode.UNAVAILABLE, details, Source.NODE, ID)
    assert shown.startswith(OUTCOME_UNKNOWN_PREFIX)
    assert "/var/lib/gitquorum" not in shown


def test_the_gateway_does_not_show_it_either() -> None:
    # The gateway shows as they are the messages that carry a correlation id.
    details = _node_message(f"the update is applied on this node; {VOTE_REFUSED}")
    _, shown = public_status(grpc.StatusCode.UNAVAILABLE, details, Source.NODE, ID)
    text = gateway_status.describe(grpc.StatusCode.UNAVAILABLE, shown, "g/p.git", "default")
    assert "10.1.2.3" not in text
