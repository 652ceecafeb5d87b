"""Praefect's and Gitaly's option names, and what gitquorum calls them.

Operators arrive with a Praefect ``config.toml`` (in front of the nodes) or a
Gitaly one (on the nodes). Such a file is recognised, as TOML or by its keys,
and every option it names gets an error that says what to write instead
(docs/configuration.md, "Coming from Praefect").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_LISTEN = "use `listen` (host:port)"
_TLS_LISTEN = "use `listen` with `tls.cert_file` and `tls.key_file` (one listener serves TLS)"
_SOCKET = "not supported: use `listen` (TCP)"
_METRICS = "use `metrics_listen`"
_LOGGING = "use `log_level` (logs are JSON lines on stderr)"
_REMOVE = "remove: no such setting"

# Top-level keys of a Praefect configuration, for a proxy's file.
PRAEFECT_PROXY_RENAMES: Mapping[str, str] = {
    "listen_addr": _LISTEN,
    "tls_listen_addr": _TLS_LISTEN,
    "socket_path": _SOCKET,
    "prometheus_listen_addr": _METRICS,
    "prometheus": "remove: latency buckets are fixed (docs/metrics.md)",
    "virtual_storage": "use `virtual_storages`: a list of {name, default_replication_factor, "
    "nodes: [{storage, address}]} (Praefect's `node` list is `nodes`; the nodes' `token` is "
    "`auth.node_token_file`)",
    "failover": "remove: failover is always on, run by the leader proxy elected in etcd; "
    "its timing follows `health.interval`, `health.timeout` and `election.ttl`",
    "database": "use `etcd.endpoints`: cluster state lives in etcd (no PostgreSQL)",
    "logging": _LOGGING,
    "sentry": _REMOVE,
    "graceful_stop_timeout": "use `graceful_timeout`",
    "reconciliation": "use `replication.reconcile_interval` (Praefect's `scheduling_interval`)",
    "background_verification": "use `replication.verify_interval` "
    "(Praefect's `verification_interval`)",
    "memory_queue_enabled": "remove: the replication queue lives in etcd",
    "repositories_cleanup": "remove: `gitquorum list-untracked-repositories` and "
    "`track-repository` do this on demand",
    "yamux": _REMOVE,
    "i_understand_my_election_strategy_is_unsupported_and_will_be_removed_without_warning": (
        _REMOVE
    ),
}

# Top-level keys of a Gitaly configuration, for a node's file.
GITALY_NODE_RENAMES: Mapping[str, str] = {
    "listen_addr": _LISTEN,
    "tls_listen_addr": _TLS_LISTEN,
    "socket_path": _SOCKET,
    "prometheus_listen_addr": _METRICS,
    "storage": "use `storages`: a list of {name, path}",
    "logging": _LOGGING,
    "graceful_restart_timeout": "use `graceful_timeout`",
    "concurrency": "use `limits.mutator_concurrency` and `limits.read_concurrency` "
    "(per repository; docs/limits.md)",
    "bin_dir": "remove: git is `git` on PATH, or $GITQUORUM_GIT",
    "git": "remove: git is `git` on PATH, or $GITQUORUM_GIT",
    "runtime_dir": _REMOVE,
    "gitlab": _REMOVE,
    "hooks": _REMOVE,
    "gitaly-ruby": _REMOVE,
    "pack_objects_cache": _REMOVE,
    "daily_maintenance": _REMOVE,
}

# Keys inside sections both programs share a name with.
SECTION_RENAMES: Mapping[str, Mapping[str, str]] = {
    "auth": {
        "token": "use `auth.token_file`: secrets come only from files (or the environment)",
        "transitioning": "remove: during a rotation the token file holds both secrets, "
        "one per line",
    },
    "tls": {
        "certificate_path": "use `tls.cert_file`",
        "key_path": "use `tls.key_file`",
    },
    "replication": {
        "batch_size": "remove: `replication.workers` sets how many jobs run at once",
        "parallel_storage_processing_concurrency": "use `replication.workers`",
    },
}

# Keys that only a Praefect or a Gitaly file has: any one of them names the file's origin.
_PRAEFECT_MARKERS = (
    "virtual_storage",
    "failover",
    "database",
    "listen_addr",
    "socket_path",
    "prometheus_listen_addr",
    "graceful_stop_timeout",
    "reconciliation",
    "background_verification",
)
_GITALY_MARKERS = ("storage", "bin_dir", "runtime_dir", "gitlab", "graceful_restart_timeout")

DOCS = "docs/configuration.md, 'Coming from Praefect'"


def origin(data: Mapping[str, Any]) -> tuple[str, list[str]]:
    """("Praefect" | "Gitaly" | "", the keys that tell)."""
    praefect = [k for k in _PRAEFECT_MARKERS if k in data]
    gitaly = [k for k in _GITALY_MARKERS if k in data]
    if "virtual_storage" in data or len(praefect) > len(gitaly):
        return "Praefect", praefect
    if gitaly:
        return "Gitaly", [*gitaly, *(k for k in praefect if k not in gitaly)]
    return ("Praefect", praefect) if praefect else ("", [])


def looks_foreign(data: Mapping[str, Any]) -> str | None:
    """The root problem of a YAML file written with Praefect's or Gitaly's names."""
    who, keys = origin(data)
    if not who:
        return None
    return (
        f"<root>: this looks like a {who} configuration ({', '.join(keys)}): "
        f"gitquorum names its options differently; rename each option below ({DOCS})"
    )


def foreign_config_problems(data: Mapping[str, Any], *, toml: bool) -> list[str]:
    """Every problem of a TOML file, or of a mapping in Praefect's or Gitaly's names."""
    who, _keys = origin(data)
    if toml:
        what = f"a {who} configuration (TOML)" if who else "TOML"
        problems = [f"<root>: {what}: gitquorum reads YAML; write it as YAML with the names below"]
    else:
        problems = [p for p in [looks_foreign(data)] if p]
    renames = GITALY_NODE_RENAMES if who == "Gitaly" else PRAEFECT_PROXY_RENAMES
    for key in data:
        if key in renames:
            problems.append(f"{key}: {renames[key]}")
        section = data[key]
        if key in SECTION_RENAMES and isinstance(section, Mapping):
            problems += [
                f"{key}.{sub}: {hint}"
                for sub, hint in SECTION_RENAMES[key].items()
                if sub in section
            ]
    return problems
