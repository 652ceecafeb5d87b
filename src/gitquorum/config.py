"""Typed, validated configuration.

Configuration is YAML mapped onto frozen dataclasses. Loading collects every
problem with its dotted path and reports them all at once (``ConfigError``),
so an operator fixes a file in one pass. Durations are strings: "1s", "500ms".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gitquorum.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | int | float) -> float:
    """Seconds from "1s", "500ms", "2m", "1h" (bare numbers are seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"negative duration: {value!r}")
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. '1s', '500ms')")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` (IPv6 hosts in brackets); port 0 means any free port."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
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

    def unknown(self, data: dict[str, Any], known: set[str], path: str) -> None:
        for key in sorted(set(map(str, data)) - known):
            self.problem(f"{path}{key}", "unknown option")

    def string(self, data: dict[str, Any], key: str, path: str, default: str | None = None) -> str:
        value = data.get(key, default)
        if value is None:
            self.problem(f"{path}{key}", "required")
            return ""
        if not isinstance(value, str) or not value:
            self.problem(f"{path}{key}", "expected a non-empty string")
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
        try:
            return parse_duration(data.get(key, default))
        except ValueError as exc:
            self.problem(f"{path}{key}", str(exc))
            return parse_duration(default)

    def integer(self, data: dict[str, Any], key: str, path: str, default: int, minimum: int) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.problem(f"{path}{key}", f"expected an integer >= {minimum}")
            return default
        return value

    def choice(self, data: dict[str, Any], key: str, path: str, default: str, allowed: set[str]) -> str:
        value = data.get(key, default)
        if value not in allowed:
            self.problem(f"{path}{key}", f"expected one of {sorted(allowed)}")
            return default
        return str(value)


@dataclass(frozen=True)
class StorageConfig:
    name: str
    path: Path


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


LOG_LEVELS = {"debug", "info", "warning", "error"}


def node_config_from_dict(data: Any) -> NodeConfig:
    reader = _Reader()
    top = reader.mapping(data, "")
    reader.unknown(
        top,
        {"listen", "storages", "metrics_listen", "log_level", "graceful_timeout", "auth"},
        "",
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
        if name in seen:
            reader.problem(f"{path}name", f"duplicate storage name {name!r}")
        seen.add(name)
        if root and not Path(root).is_absolute():
            reader.problem(f"{path}path", "expected an absolute path")
        storages.append(StorageConfig(name, Path(root)))
    metrics = reader.address(top, "metrics_listen", "", "127.0.0.1:0")
    level = reader.choice(top, "log_level", "", "info", LOG_LEVELS)
    grace = reader.duration(top, "graceful_timeout", "", "10s")
    auth = reader.mapping(top.get("auth"), "auth")
    reader.unknown(auth, {"token_file"}, "auth.")
    token_file = str(auth.get("token_file", ""))
    if reader.problems:
        raise ConfigError(reader.problems)
    return NodeConfig(listen, tuple(storages), metrics, level, grace, token_file)


def load_yaml(path: str | Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: not valid YAML: {exc}"]) from exc


def load_node_config(path: str | Path) -> NodeConfig:
    return node_config_from_dict(load_yaml(path))
