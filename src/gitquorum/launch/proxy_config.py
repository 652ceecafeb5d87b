"""The proxy configuration every local launcher writes (``gitquorum proxy --config``).

One builder for ``gitquorum up``, the test harness and the benchmarks. Its
defaults are ``gitquorum up``'s: fast but sane for a cluster on one machine.
Callers that want other settings (the harness's faster health checks and
shorter TTLs, a benchmark's production defaults) pass ``overrides``: top-level
keys that replace the builder's whole value for that key.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

VIRTUAL_STORAGE = "default"

# gitquorum up's timings: nodes checked every second, leadership lost after
# 5 s, outdated replicas looked for every 5 s (30 s in production), and a
# drain shorter than the launcher's 10 s between SIGTERM and SIGKILL.
LOCAL_HEALTH_INTERVAL = "1s"
LOCAL_HEALTH_TIMEOUT = "1s"
LOCAL_ELECTION_TTL = "5s"
LOCAL_RECONCILE_INTERVAL = "5s"
LOCAL_GRACEFUL_TIMEOUT = "5s"
LOCAL_WORKERS = 1


def proxy_config(
    *,
    name: str,
    listen: str,
    etcd_endpoints: Sequence[str],
    nodes: Sequence[tuple[str, str]],
    replication_factor: int,
    virtual_storage: str = VIRTUAL_STORAGE,
    metrics_listen: str = "",
    token_file: str = "",
    node_token_file: str = "",
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The configuration of proxy ``name`` in front of ``nodes`` ((storage, address) pairs).

    ``metrics_listen`` empty: the proxy's default (a free port, reported in its
    ready file). ``token_file`` given: authentication on, with the node secret
    in ``node_token_file``.
    """
    config: dict[str, Any] = {
        "name": name,
        "listen": listen,
        **({"metrics_listen": metrics_listen} if metrics_listen else {}),
        "etcd": {"endpoints": list(etcd_endpoints)},
        "virtual_storages": [
            {
                "name": virtual_storage,
                "default_replication_factor": replication_factor,
                "nodes": [{"storage": storage, "address": address} for storage, address in nodes],
            }
        ],
        "health": {"interval": LOCAL_HEALTH_INTERVAL, "timeout": LOCAL_HEALTH_TIMEOUT},
        "election": {"ttl": LOCAL_ELECTION_TTL},
        "replication": {"reconcile_interval": LOCAL_RECONCILE_INTERVAL},
        "graceful_timeout": LOCAL_GRACEFUL_TIMEOUT,
        "log_level": "info",
        # One process per proxy, not one per core: a local cluster shares the
        # machine's cores with its nodes and etcd, and the tests and benchmarks
        # keep their timing. A caller wanting more passes "workers" in overrides.
        "workers": LOCAL_WORKERS,
    }
    if token_file:
        config["auth"] = {"token_file": token_file, "node_token_file": node_token_file}
    config.update(overrides or {})
    return config
