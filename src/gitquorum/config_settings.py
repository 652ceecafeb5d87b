"""The settings every proxy of one cluster must share, as short hashes per section.

Proxies act on one shared state in etcd: if one proxy checks health more
slowly, waits longer for votes, or knows another set of nodes, failover and
writes behave differently depending on which proxy serves or leads. Each proxy
publishes these hashes in its membership record (cluster/membership.py) and
``gitquorum check`` fails when live proxies differ (cluster/settings.py).

Per-proxy settings are left out: names and addresses, TLS files, log level,
graceful timeout, replication workers and admission limits (sized per host),
and the etcd endpoints and credentials (each host may list its own).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gitquorum.config import ProxyConfig


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cluster_settings(config: ProxyConfig) -> dict[str, str]:
    """section -> hash of that section's cluster-wide settings."""
    sections: dict[str, Any] = {
        "etcd.cluster": config.etcd.cluster,
        "virtual_storages": [
            {
                "name": vs.name,
                "default_replication_factor": vs.default_replication_factor,
                "nodes": sorted([n.storage, n.address] for n in vs.nodes),
            }
            for vs in sorted(config.virtual_storages, key=lambda vs: vs.name)
        ],
        "health": [config.health_interval, config.health_timeout],
        "election": [config.election_ttl],
        "timeouts": [config.vote_timeout, config.write_timeout, config.stale_read_limit],
        "replication": [
            config.replication_attempts,
            config.reconcile_interval,
            config.verify_interval,
        ],
        # Whether clients and nodes need tokens and nodes TLS, not the secrets themselves.
        "security": [
            bool(config.auth_token_file),
            bool(config.node_token_file),
            config.node_tls is not None,
        ],
    }
    return {name: _digest(value) for name, value in sections.items()}
