"""Typed, validated configuration.

Configuration is YAML mapped onto frozen dataclasses. Loading collects every
problem with its dotted path and reports them all at once (``ConfigError``),
so an operator fixes a file in one pass. Durations are strings: "1s", "500ms".
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gitquorum.config_praefect import (
    GITALY_NODE_RENAMES,
    PRAEFECT_PROXY_RENAMES,
    SECTION_RENAMES,
    foreign_config_problems,
    looks_foreign,
)
from gitquorum.config_yaml import located, yaml_lines
from gitquorum.errors import ConfigError
from gitquorum.wire.options import MAX_MESSAGE_SIZE

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_POSITIVE = "must be greater than zero (e.g. '500ms', '10s')"


def parse_duration(value: str | int | float) -> float:
    """Seconds from "1s", "500ms", "2m", "1h" (bare numbers are seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"negative duration: {value!r}")
        seconds = _finite(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. '1s', '500ms')")
        seconds = _finite(float(match.group(1)) * _UNITS[match.group(2)])
    return seconds


def _finite(value: float) -> float:
    # YAML has .nan and .inf, and a long digit string overflows float: none of
    # them is a usable timeout, and float(huge int) raises OverflowError rather
    # than the ValueError callers handle.
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise ValueError(f"not a finite duration: {value!r}")
    return seconds


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets); port 0 means any free port."""
    host, sep, port = value.rpartition(":")
    # isascii: str.isdigit() also accepts digits such as "²" that int() rejects.
    if not sep or not (port.isascii() and port.isdigit()) or not host:
        raise ValueError(f"not a host:port address: {value!r}")
    number = int(port)
    if number > 65535:
        raise ValueError(f"port out of range: {value!r}")
    return host.strip("[]"), number


class _Reader:
    """Walks untyped YAML data, recording problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        self.problems.append(f"{path}: {message}")

    def mapping(self, data: Any, path: str) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            self.problem(path or "<root>", "expected a mapping")
            return {}
        return data

    def unknown(
        self,
        data: dict[str, Any],
        known: set[str],
        path: str,
        renames: Mapping[str, str] | None = None,
    ) -> None:
        """Unknown keys are problems; a known foreign name (``renames``) says what to use."""
        for key in sorted(set(map(str, data)) - known):
            hint = (renames or {}).get(key)
            self.problem(f"{path}{key}", f"unknown option: {hint}" if hint else "unknown option")

    def string(self, data: dict[str, Any], key: str, path: str, default: str | None = None) -> str:
        value = data.get(key, default)
        if value is None:
            self.problem(f"{path}{key}", "required")
            return ""
        if not isinstance(value, str) or not value:
            self.problem(f"{path}{key}", "expected a non-empty string")
            return ""
        return value

    def optional_string(self, data: dict[str, Any], key: str, path: str) -> str:
        """An optional string option: absent is "", anything but a string is a problem."""
        value = data.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            self.problem(f"{path}{key}", "expected a string")
            return ""
        return value

    def address(self, data: dict[str, Any], key: str, path: str, default: str | None) -> str:
        value = self.string(data, key, path, default)
        if value:
            try:
                parse_address(value)
            except ValueError as exc:
                self.problem(f"{path}{key}", str(exc))
        return value

    def duration(self, data: dict[str, Any], key: str, path: str, default: str) -> float:
        """A duration option; every one is a timeout, an interval or a TTL: above zero."""
        value = data.get(key, default)
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            # "-1s" fails the syntax; say what is wrong with it rather than how to write one.
            negative = (isinstance(value, str) and value.strip().startswith("-")) or (
                isinstance(value, int | float) and not isinstance(value, bool) and value < 0
            )
            self.problem(f"{path}{key}", _POSITIVE if negative else str(exc))
            return parse_duration(default)
        if seconds <= 0:
            self.problem(f"{path}{key}", _POSITIVE)
            return parse_duration(default)
        return seconds

    def integer(self, data: dict[str, Any], key: str, path: str, default: int, minimum: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.problem(f"{path}{key}", f"expected an integer >= {minimum}")
            return default
        return value

    def boolean(self, data: dict[str, Any], key: str, path: str, default: bool) -> bool:
        value = data.get(key, default)
        if not isinstance(value, bool):
            self.problem(f"{path}{key}", "expected true or false")
            return default
        return value

    def choice(
        self, data: dict[str, Any], key: str, path: str, default: str, allowed: set[str]
    ) -> str:
        value = data.get(key, default)
        # Unhashable YAML values (lists, mappings) cannot be looked up in a set.
        if not isinstance(value, str) or value not in allowed:
            self.problem(f"{path}{key}", f"expected one of {sorted(allowed)}")
            return default
        return str(value)


@dataclass(frozen=True)
class LimitsConfig:
    """Admission limits of a node or a proxy (every one is described in docs/limits.md)."""

    # Largest gRPC request message accepted; a bigger one fails RESOURCE_EXHAUSTED.
    max_message_size: int = MAX_MESSAGE_SIZE
    # Per repository: mutators running at once, and expensive reads (pack, bundle,
    # snapshot and archive streams) running at once; 0 means no limit.
    mutator_concurrency: int = 10
    read_concurrency: int = 20
    # Per repository and kind: calls waiting for a slot; beyond, RESOURCE_EXHAUSTED at once.
    max_queued: int = 100
    # How long a call waits for a slot before RESOURCE_EXHAUSTED.
    queue_timeout: float = 10.0


# A node serves every proxy: its per-repository limits must not be the tighter ones,
# or writes the proxies admitted would queue a second time on the nodes.
NODE_LIMITS = LimitsConfig(mutator_concurrency=32, read_concurrency=64, max_queued=200)
PROXY_LIMITS = LimitsConfig()
_LIMIT_KEYS = {
    "max_message_size",
    "mutator_concurrency",
    "read_concurrency",
    "max_queued",
    "queue_timeout",
}


def _limits(reader: _Reader, data: Any, defaults: LimitsConfig) -> LimitsConfig:
    """The ``limits`` section of a node or proxy configuration."""
    raw = reader.mapping(data, "limits")
    reader.unknown(raw, _LIMIT_KEYS, "limits.")
    return LimitsConfig(
        # At least 64 KiB: the pack streams are sent in chunks of that size.
        max_message_size=reader.integer(
            raw, "max_message_size", "limits.", defaults.max_message_size, 64 * 1024
        ),
        mutator_concurrency=reader.integer(
            raw, "mutator_concurrency", "limits.", defaults.mutator_concurrency, 0
        ),
        read_concurrency=reader.integer(
            raw, "read_concurrency", "limits.", defaults.read_concurrency, 0
        ),
        max_queued=reader.integer(raw, "max_queued", "limits.", defaults.max_queued, 0),
        queue_timeout=reader.duration(
            raw, "queue_timeout", "limits.", f"{defaults.queue_timeout}s"
        ),
    )


@dataclass(frozen=True)
class ReadsConfig:
    """How a proxy's reads outlive a failing or stalled replica (docs/failover.md)."""

    # Unary reads not answered within the node's recent p95 (at least the
    # floor) go to a second up-to-date replica too; the first answer wins.
    hedging: bool = True
    hedge_delay_floor: float = 0.02
    # Failed reads or lost hedges in a row that take a node out of this proxy's
    # read set, and for how long.
    outlier_failures: int = 5
    outlier_ejection_time: float = 10.0
    # A read with no healthy up-to-date replica goes to the up-to-date ones the
    # health consensus calls unhealthy: the first that answers a health check
    # within the timeout serves it; off: such reads are refused at once.
    last_resort: bool = True
    last_resort_timeout: float = 2.0


_READS_KEYS = {
    "hedging",
    "hedge_delay_floor",
    "outlier_failures",
    "outlier_ejection_time",
    "last_resort",
    "last_resort_timeout",
}


def _reads(reader: _Reader, data: Any) -> ReadsConfig:
    """The ``reads`` section of a proxy configuration."""
    raw = reader.mapping(data, "reads")
    reader.unknown(raw, _READS_KEYS, "reads.")
    default = ReadsConfig()
    floor = reader.duration(raw, "hedge_delay_floor", "reads.", "20ms")
    if not 0.001 <= floor <= 1.0:
        reader.problem("reads.hedge_delay_floor", "expected a duration from 1ms to 1s")
        floor = default.hedge_delay_floor
    ejection = reader.duration(raw, "outlier_ejection_time", "reads.", "10s")
    if not 0.1 <= ejection <= 600.0:
        reader.problem("reads.outlier_ejection_time", "expected a duration from 100ms to 10m")
        ejection = default.outlier_ejection_time
    last_resort = reader.duration(raw, "last_resort_timeout", "reads.", "2s")
    if not 0.1 <= last_resort <= 60.0:
        reader.problem("reads.last_resort_timeout", "expected a duration from 100ms to 1m")
        last_resort = default.last_resort_timeout
    return ReadsConfig(
        hedging=reader.boolean(raw, "hedging", "reads.", default.hedging),
        hedge_delay_floor=floor,
        outlier_failures=reader.integer(
            raw, "outlier_failures", "reads.", default.outlier_failures, 1
        ),
        outlier_ejection_time=ejection,
        last_resort=reader.boolean(raw, "last_resort", "reads.", default.last_resort),
        last_resort_timeout=last_resort,
    )


@dataclass(frozen=True)
class StorageConfig:
    name: str
    path: Path


@dataclass(frozen=True)
class TlsSettings:
    """Certificate files of one side of gRPC connections ("" when unset; docs/security.md).

    As a listener: ``cert_file`` + ``key_file`` serve TLS, ``client_ca_file``
    also requires client certificates signed by it. As a dialler: ``ca_file``
    verifies servers (empty: the system's roots), ``cert_file`` + ``key_file``
    are presented when a server asks for a client certificate.
    """

    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""
    client_ca_file: str = ""


def _tls(reader: _Reader, data: Any, path: str, keys: set[str], *, listener: bool) -> TlsSettings:
    """A ``tls``-style section: file options, the certificate and key given together."""
    raw = reader.mapping(data, path)
    reader.unknown(raw, keys, f"{path}.", SECTION_RENAMES["tls"])
    files = {k: reader.optional_string(raw, k, f"{path}.") for k in sorted(keys)}
    settings = TlsSettings(**files)
    if bool(settings.cert_file) != bool(settings.key_file):
        missing = "key_file" if settings.cert_file else "cert_file"
        reader.problem(f"{path}.{missing}", "required with cert_file and key_file together")
    if listener and settings.client_ca_file and not settings.cert_file:
        reader.problem(f"{path}.cert_file", "required: the listener serves TLS only with one")
    return settings


@dataclass(frozen=True)
class NodeConfig:
    """A storage node: one gRPC listener serving one or more storages."""

    listen: str
    storages: tuple[StorageConfig, ...]
    metrics_listen: str = "127.0.0.1:0"
    log_level: str = "info"
    graceful_timeout: float = 10.0
    # Optional secret file for the v2 token scheme; empty means no authentication.
    auth_token_file: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Message size, per-repository concurrency and queueing (docs/limits.md).
    limits: LimitsConfig = NODE_LIMITS
    # TLS of the listener, and of the node's calls to proxies (votes) and to
    # other nodes (replication) when they advertise tls:// (docs/security.md).
    tls: TlsSettings = TlsSettings()
    # How long one transaction vote waits for the proxy's answer.
    vote_timeout: float = 60.0
    # Processes serving the one listen address (SO_REUSEPORT); 1 unless set
    # (docs/workers.md, "The storage node").
    workers: int = 1


LOG_LEVELS = {"debug", "info", "warning", "error"}


def node_config_from_dict(data: Any) -> NodeConfig:
    reader = _Reader()
    top = reader.mapping(data, "")
    if foreign := looks_foreign(top):
        reader.problems.append(foreign)
    reader.unknown(
        top,
        {
            "listen",
            "storages",
            "metrics_listen",
            "log_level",
            "graceful_timeout",
            "auth",
            "limits",
            "tls",
            "vote_timeout",
            "workers",
        },
        "",
        GITALY_NODE_RENAMES,
    )
    listen = reader.address(top, "listen", "", None)
    storages: list[StorageConfig] = []
    raw_storages = top.get("storages")
    if not isinstance(raw_storages, list) or not raw_storages:
        reader.problem("storages", "expected a non-empty list of {name, path}")
        raw_storages = []
    seen: set[str] = set()
    for index, item in enumerate(raw_storages):
        path = f"storages.{index}."
        entry = reader.mapping(item, path.rstrip("."))
        reader.unknown(entry, {"name", "path"}, path)
        name = reader.string(entry, "name", path)
        root = reader.string(entry, "path", path)
        # A missing name is already reported; don't call it a duplicate too.
        if name and name in seen:
            reader.problem(f"{path}name", f"duplicate storage name {name!r}")
        seen.add(name)
        if root and not Path(root).is_absolute():
            reader.problem(f"{path}path", "expected an absolute path")
        storages.append(StorageConfig(name, Path(root)))
    metrics = reader.address(top, "metrics_listen", "", "127.0.0.1:0")
    level = reader.choice(top, "log_level", "", "info", LOG_LEVELS)
    grace = reader.duration(top, "graceful_timeout", "", "10s")
    vote_timeout = reader.duration(top, "vote_timeout", "", "60s")
    auth = reader.mapping(top.get("auth"), "auth")
    reader.unknown(auth, {"token_file"}, "auth.", SECTION_RENAMES["auth"])
    token_file = reader.optional_string(auth, "token_file", "auth.")
    limits = _limits(reader, top.get("limits"), NODE_LIMITS)
    tls = _tls(
        reader,
        top.get("tls"),
        "tls",
        {"cert_file", "key_file", "client_ca_file", "ca_file"},
        listener=True,
    )
    workers = reader.integer(top, "workers", "", 1, 1)
    if workers > 1:
        _check_worker_limits(reader, workers, limits)
    if reader.problems:
        raise ConfigError(reader.problems)
    return NodeConfig(
        listen,
        tuple(storages),
        metrics,
        level,
        grace,
        token_file,
        limits=limits,
        tls=tls,
        vote_timeout=vote_timeout,
        workers=workers,
    )


def load_yaml(path: str | Path) -> Any:
    """The file's data; problems reading or parsing it name the file (and line)."""
    return _load(path)[0]


def _load(path: str | Path) -> tuple[Any, dict[str, int]]:
    """The file's data and the line of each dotted path in it."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not valid UTF-8: {exc}"]) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        _refuse_toml(path, text)
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError([f"{where}: not valid YAML: {exc}"]) from exc
    except RecursionError as exc:
        # The YAML parser recurses once per nesting level.
        raise ConfigError([f"{path}: not valid YAML: nested too deeply"]) from exc
    if not isinstance(data, dict | None):
        # TOML's "key = value" lines read as one YAML string.
        _refuse_toml(path, text)
    return data, yaml_lines(text)


def _refuse_toml(path: str | Path, text: str) -> None:
    """A TOML file (Praefect's and Gitaly's format) gets an error saying so."""
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError):
        return
    if data:
        raise ConfigError([f"{path}: {p}" for p in foreign_config_problems(data, toml=True)])


def _load_config(path: str | Path, from_dict: Any) -> Any:
    data, lines = _load(path)
    try:
        return from_dict(data)
    except ConfigError as exc:
        raise ConfigError(located(path, lines, exc.problems)) from exc


def load_node_config(path: str | Path) -> NodeConfig:
    """Problems name the file and, where the key is in it, the line."""
    config: NodeConfig = _load_config(path, node_config_from_dict)
    return config


@dataclass(frozen=True)
class NodeEntry:
    """A physical storage node behind a virtual storage."""

    storage: str
    address: str


@dataclass(frozen=True)
class VirtualStorageConfig:
    name: str
    nodes: tuple[NodeEntry, ...]
    default_replication_factor: int = 3


@dataclass(frozen=True)
class EtcdSettings:
    endpoints: tuple[str, ...]
    # Every key of the cluster lives under /gitquorum/<cluster>/.
    cluster: str = "default"
    username: str = ""
    password_file: str = ""
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""


@dataclass(frozen=True)
class ProxyConfig:
    """A proxy: one client-facing endpoint for one or more virtual storages."""

    listen: str
    name: str
    etcd: EtcdSettings
    virtual_storages: tuple[VirtualStorageConfig, ...]
    metrics_listen: str = "127.0.0.1:0"
    log_level: str = "info"
    graceful_timeout: float = 10.0
    health_interval: float = 1.0
    health_timeout: float = 1.0
    election_ttl: float = 5.0
    vote_timeout: float = 10.0
    write_timeout: float = 10.0
    # Without contact with etcd for this long, the proxy stops serving from its
    # cached cluster state (reads get UNAVAILABLE; writes already fail closed).
    # It bounds how stale a read can be (docs/failover.md, "Reads across proxies").
    stale_read_limit: float = 5.0
    replication_workers: int = 2
    replication_attempts: int = 3
    reconcile_interval: float = 30.0
    verify_interval: float = 300.0
    # Address nodes use to reach this proxy for votes; default: the listen address.
    advertise: str = ""
    auth_token_file: str = ""
    node_token_file: str = ""
    # Message size, per-repository concurrency and queueing (docs/limits.md).
    limits: LimitsConfig = PROXY_LIMITS
    # Retries, hedging and outlier detection of reads (docs/failover.md).
    reads: ReadsConfig = ReadsConfig()
    # TLS of the client-facing listener, and of the channels to nodes (docs/security.md).
    tls: TlsSettings = TlsSettings()
    node_tls: TlsSettings | None = None
    # Processes serving the one listen address (SO_REUSEPORT); 1: one process.
    # Absent means 1; `workers: auto` gets auto_workers() (docs/workers.md).
    workers: int = 1
    # Pooled workers only, one entry per worker: where each worker takes the
    # nodes' votes (absent: a free port on the host of listen), and the address
    # the nodes dial for it (absent: the host of advertise, that port). For
    # firewalls and NAT that must know the vote ports (docs/workers.md).
    vote_listen: tuple[str, ...] = ()
    vote_advertise: tuple[str, ...] = ()


# The etcd watch hears from etcd every second (progress notifications) and
# replaces a silent stream after 3 s (cluster/etcd_store.py): a lower limit
# would refuse reads while etcd is healthy.
MIN_STALE_READ_LIMIT = 3.0


def _stale_read_limit(reader: _Reader, top: dict[str, Any]) -> float:
    # Below the minimum (zero included) gets the minimum's reason; anything
    # unreadable is reported by reader.duration.
    with contextlib.suppress(ValueError):
        if parse_duration(top.get("stale_read_limit", "5s")) < MIN_STALE_READ_LIMIT:
            reader.problem(
                "stale_read_limit",
                f"must be at least {MIN_STALE_READ_LIMIT:g}s (the etcd watch hears from etcd "
                "every second and replaces a silent stream after 3s)",
            )
            return MIN_STALE_READ_LIMIT
    return reader.duration(top, "stale_read_limit", "", "5s")


def proxy_config_from_dict(data: Any) -> ProxyConfig:
    reader = _Reader()
    top = reader.mapping(data, "")
    if foreign := looks_foreign(top):
        reader.problems.append(foreign)
    reader.unknown(
        top,
        {
            "listen",
            "name",
            "etcd",
            "virtual_storages",
            "metrics_listen",
            "log_level",
            "graceful_timeout",
            "health",
            "election",
            "vote_timeout",
            "write_timeout",
            "stale_read_limit",
            "replication",
            "advertise",
            "auth",
            "limits",
            "reads",
            "tls",
            "node_tls",
            "workers",
            "vote_listen",
            "vote_advertise",
        },
        "",
        PRAEFECT_PROXY_RENAMES,
    )
    listen = reader.address(top, "listen", "", None)
    name = reader.string(top, "name", "", listen or "proxy")
    etcd_raw = reader.mapping(top.get("etcd"), "etcd")
    reader.unknown(
        etcd_raw,
        {"endpoints", "cluster", "username", "password_file", "ca_file", "cert_file", "key_file"},
        "etcd.",
    )
    endpoints = etcd_raw.get("endpoints")
    if (
        not isinstance(endpoints, list)
        or not endpoints
        or not all(isinstance(e, str) and e for e in endpoints)
    ):
        reader.problem("etcd.endpoints", "expected a non-empty list of host:port strings")
        endpoints = []
    cluster = reader.string(etcd_raw, "cluster", "etcd.", "default")
    if cluster and not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", cluster):
        reader.problem("etcd.cluster", "expected letters, digits, '.', '_' or '-'")
    etcd = EtcdSettings(
        tuple(endpoints),
        cluster,
        *(
            reader.optional_string(etcd_raw, k, "etcd.")
            for k in ("username", "password_file", "ca_file", "cert_file", "key_file")
        ),
    )
    storages: list[VirtualStorageConfig] = []
    raw = top.get("virtual_storages")
    if not isinstance(raw, list) or not raw:
        reader.problem("virtual_storages", "expected a non-empty list")
        raw = []
    seen_vs: set[str] = set()
    for i, item in enumerate(raw):
        path = f"virtual_storages.{i}."
        vs = reader.mapping(item, path.rstrip("."))
        reader.unknown(vs, {"name", "nodes", "default_replication_factor"}, path)
        vs_name = reader.string(vs, "name", path)
        if vs_name and vs_name in seen_vs:
            reader.problem(f"{path}name", f"duplicate virtual storage {vs_name!r}")
        seen_vs.add(vs_name)
        nodes_raw = vs.get("nodes")
        if not isinstance(nodes_raw, list) or not nodes_raw:
            reader.problem(f"{path}nodes", "expected a non-empty list of {storage, address}")
            nodes_raw = []
        nodes: list[NodeEntry] = []
        seen_nodes: set[str] = set()
        for j, node_item in enumerate(nodes_raw):
            npath = f"{path}nodes.{j}."
            node = reader.mapping(node_item, npath.rstrip("."))
            reader.unknown(node, {"storage", "address"}, npath)
            storage = reader.string(node, "storage", npath)
            if storage and storage in seen_nodes:
                reader.problem(f"{npath}storage", f"duplicate storage {storage!r}")
            seen_nodes.add(storage)
            nodes.append(NodeEntry(storage, reader.address(node, "address", npath, None)))
        # Unset: three replicas, or every node when there are fewer.
        rf = reader.integer(vs, "default_replication_factor", path, min(3, max(1, len(nodes))), 1)
        if nodes and rf > len(nodes):
            reader.problem(
                f"{path}default_replication_factor",
                f"{rf} is more than the {len(nodes)} configured nodes",
            )
        storages.append(VirtualStorageConfig(vs_name, tuple(nodes), rf))
    health = reader.mapping(top.get("health"), "health")
    reader.unknown(health, {"interval", "timeout"}, "health.")
    election = reader.mapping(top.get("election"), "election")
    reader.unknown(election, {"ttl"}, "election.")
    replication = reader.mapping(top.get("replication"), "replication")
    reader.unknown(
        replication,
        {"workers", "attempts", "reconcile_interval", "verify_interval"},
        "replication.",
        SECTION_RENAMES["replication"],
    )
    auth = reader.mapping(top.get("auth"), "auth")
    reader.unknown(auth, {"token_file", "node_token_file"}, "auth.", SECTION_RENAMES["auth"])
    limits = _limits(reader, top.get("limits"), PROXY_LIMITS)
    config = ProxyConfig(
        listen=listen,
        name=name,
        etcd=etcd,
        virtual_storages=tuple(storages),
        metrics_listen=reader.address(top, "metrics_listen", "", "127.0.0.1:0"),
        log_level=reader.choice(top, "log_level", "", "info", LOG_LEVELS),
        graceful_timeout=reader.duration(top, "graceful_timeout", "", "10s"),
        health_interval=reader.duration(health, "interval", "health.", "1s"),
        health_timeout=reader.duration(health, "timeout", "health.", "1s"),
        election_ttl=reader.duration(election, "ttl", "election.", "5s"),
        vote_timeout=reader.duration(top, "vote_timeout", "", "10s"),
        write_timeout=reader.duration(top, "write_timeout", "", "10s"),
        stale_read_limit=_stale_read_limit(reader, top),
        replication_workers=reader.integer(replication, "workers", "replication.", 2, 1),
        replication_attempts=reader.integer(replication, "attempts", "replication.", 3, 1),
        reconcile_interval=reader.duration(
            replication, "reconcile_interval", "replication.", "30s"
        ),
        verify_interval=reader.duration(replication, "verify_interval", "replication.", "5m"),
        advertise=reader.optional_string(top, "advertise", ""),
        auth_token_file=reader.optional_string(auth, "token_file", "auth."),
        node_token_file=reader.optional_string(auth, "node_token_file", "auth."),
        limits=limits,
        reads=_reads(reader, top.get("reads")),
        tls=_tls(
            reader,
            top.get("tls"),
            "tls",
            {"cert_file", "key_file", "client_ca_file"},
            listener=True,
        ),
        # Present (even empty: the system's roots verify the nodes) means TLS to every node.
        workers=_proxy_workers(reader, top, limits),
        vote_listen=_address_list(reader, top, "vote_listen"),
        vote_advertise=_address_list(reader, top, "vote_advertise", schemes=True),
        node_tls=None
        if top.get("node_tls") is None
        else _tls(
            reader,
            top["node_tls"],
            "node_tls",
            {"ca_file", "cert_file", "key_file"},
            listener=False,
        ),
    )
    if config.workers > 1:
        _check_worker_limits(reader, config.workers, config.limits)
    _check_vote_addresses(reader, config, top)
    if reader.problems:
        raise ConfigError(reader.problems)
    return config


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under taskset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def auto_workers(limits: LimitsConfig) -> int:
    """``workers: auto``: one process per usable core, within the limits' shares.

    No more than the smallest non-zero per-repository concurrency limit, nor
    than a non-zero ``max_queued``, since each worker enforces its share of
    them and a share must be 1 at least (a share of 0 would mean "no limit"
    for a concurrency limit, "never queue" for the queue).
    """
    caps = [
        v for v in (limits.mutator_concurrency, limits.read_concurrency, limits.max_queued) if v > 0
    ]
    return max(1, min([usable_cores(), *caps]))


def _proxy_workers(reader: _Reader, top: dict[str, Any], limits: LimitsConfig) -> int:
    """Absent means 1, as before workers existed; ``auto`` is the opt-in to one per core.

    Not one per core by default: on an upgrade that would silently move the
    votes to per-worker ports (docs/workers.md), turn the per-repository
    limits into per-worker shares and change which ports must be open.
    """
    if top.get("workers") == "auto":
        return auto_workers(limits)
    value = top.get("workers", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        reader.problem("workers", 'expected an integer >= 1 or "auto"')
        return 1
    return value


def _check_worker_limits(reader: _Reader, workers: int, limits: LimitsConfig) -> None:
    """Each worker gets its share of a per-repository limit: every share must be one at least.

    A share of 0 would mean "no limit" in that worker (limits.worker_limits).
    """
    for key in ("mutator_concurrency", "read_concurrency"):
        value = getattr(limits, key)
        if 0 < value < workers:
            reader.problem(
                f"limits.{key}",
                f"{value} is less than workers ({workers}): each worker process gets an "
                "equal share of the limit, which must be 1 at least (or 0: no limit)",
            )


def _address_list(
    reader: _Reader, top: dict[str, Any], key: str, *, schemes: bool = False
) -> tuple[str, ...]:
    """An optional list of ``host:port`` strings (``schemes``: each may start ``tls://``)."""
    value = top.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        reader.problem(key, "expected a non-empty list of host:port strings")
        return ()
    found: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            reader.problem(f"{key}.{index}", "expected a host:port string")
            continue
        scheme, sep, rest = item.rpartition("://")
        try:
            if sep and (not schemes or scheme not in ("tls", "tcp")):
                raise ValueError(f"unexpected scheme {scheme + sep!r}")
            parse_address(rest)
        except ValueError as exc:
            reader.problem(f"{key}.{index}", str(exc))
            continue
        found.append(item)
    return tuple(found) if len(found) == len(value) else ()


def _check_vote_addresses(reader: _Reader, config: ProxyConfig, top: dict[str, Any]) -> None:
    """One vote address per worker, none shared: workers bind with ``SO_REUSEPORT``,
    so two workers given one port would both get it, and the kernel would hand a
    node's vote to a worker that does not hold its transaction; two workers
    advertising one address would send one's votes to the other.

    A list with a bad entry was reported and dropped whole, and a bad
    ``workers`` too: the checks that need them are skipped rather than
    reported a second time.
    """
    listen, advertise = config.vote_listen, config.vote_advertise
    if top.get("vote_advertise") is not None and top.get("vote_listen") is None:
        reader.problem(
            "vote_advertise", "needs vote_listen: the ports it advertises are fixed there"
        )
        return
    if top.get("vote_listen") is None or any(p.startswith("workers:") for p in reader.problems):
        return
    if top.get("workers") == "auto":
        reader.problem(
            "vote_listen",
            'cannot be used with workers: "auto" (one address per worker: give workers a number)',
        )
        return
    if config.workers < 2:
        reader.problem(
            "vote_listen",
            f"only with workers >= 2 (workers is {config.workers}): "
            "a single process takes the votes on listen",
        )
        return
    for key, entries in (("vote_listen", listen), ("vote_advertise", advertise)):
        if entries and len(entries) != config.workers:
            reader.problem(
                key, f"{len(entries)} addresses for {config.workers} workers: give one per worker"
            )
    taken: dict[int, str] = {}
    with contextlib.suppress(ValueError):
        taken[parse_address(config.listen)[1]] = "listen"
    for index, address in enumerate(listen):
        port = parse_address(address)[1]
        if port == 0:
            if top.get("vote_advertise") is not None:
                reader.problem(
                    f"vote_listen.{index}",
                    "port 0 cannot be advertised: give a port (or leave vote_advertise out)",
                )
            continue
        if port in taken:
            reader.problem(
                f"vote_listen.{index}",
                f"port {port} is also {taken[port]}'s: each worker needs a vote port of its own",
            )
        taken[port] = f"vote_listen.{index}"
    _check_vote_advertise(reader, config)


def _check_vote_advertise(reader: _Reader, config: ProxyConfig) -> None:
    """Distinct addresses with a port, in the scheme of the listener the vote ports share."""
    listener_tls = bool(config.tls.cert_file)
    seen: dict[tuple[str, int], int] = {}
    for index, address in enumerate(config.vote_advertise):
        scheme, sep, rest = address.rpartition("://")
        host, port = parse_address(rest)
        key = (host.lower(), port)
        where = f"vote_advertise.{index}"
        if port == 0:
            reader.problem(where, "expected a port other than 0: the nodes dial it")
        if sep and (scheme == "tls") != listener_tls:
            reader.problem(
                where,
                f"{scheme}:// but the vote ports serve "
                + ("TLS (tls.cert_file is set)" if listener_tls else "plaintext (no tls.cert_file)")
                + ": leave the scheme out to take the listener's",
            )
        if key in seen:
            reader.problem(
                where,
                f"{rest} is also vote_advertise.{seen[key]}: each worker "
                "needs an address of its own, or its votes reach another worker",
            )
        seen.setdefault(key, index)


def load_proxy_config(path: str | Path) -> ProxyConfig:
    """Problems name the file and, where the key is in it, the line."""
    config: ProxyConfig = _load_config(path, proxy_config_from_dict)
    return config
