"""Configuration that refuses nonsense: every case names the option, the file and the line."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path
from typing import Any

import pytest

from gitquorum.cli import config_cmd
from gitquorum.config import (
    load_node_config,
    load_proxy_config,
    node_config_from_dict,
    proxy_config_from_dict,
)
from gitquorum.errors import ConfigError
from tests.unit.test_config import GOOD_NODE, GOOD_PROXY

POSITIVE = "must be greater than zero"


def with_option(base: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(base)
    *sections, key = dotted.split(".")
    target = data
    for section in sections:
        target = target.setdefault(section, {})
    target[key] = value
    return data


def problem_at(exc: pytest.ExceptionInfo[ConfigError], dotted: str) -> str:
    found = [p for p in exc.value.problems if p.partition(": ")[0] == dotted]
    assert found, f"no problem at {dotted}: {exc.value.problems}"
    return found[0].partition(": ")[2]


# --- zero and negative durations -----------------------------------------------------------

PROXY_DURATIONS = [
    "graceful_timeout",
    "health.interval",
    "health.timeout",
    "election.ttl",
    "vote_timeout",
    "write_timeout",
    "replication.reconcile_interval",
    "replication.verify_interval",
    "limits.queue_timeout",
]
NODE_DURATIONS = ["graceful_timeout", "vote_timeout", "limits.queue_timeout"]
NOT_POSITIVE = ["0s", "0ms", 0, 0.0, "-1s", " -500ms", -5, -0.5]


@pytest.mark.parametrize("value", NOT_POSITIVE)
@pytest.mark.parametrize("dotted", PROXY_DURATIONS)
def test_proxy_refuses_durations_that_are_not_positive(dotted: str, value: Any) -> None:
    with pytest.raises(ConfigError) as exc:
        proxy_config_from_dict(with_option(GOOD_PROXY, dotted, value))
    assert problem_at(exc, dotted).startswith(POSITIVE)
    assert len(exc.value.problems) == 1


@pytest.mark.parametrize("value", NOT_POSITIVE)
@pytest.mark.parametrize("dotted", NODE_DURATIONS)
def test_node_refuses_durations_that_are_not_positive(dotted: str, value: Any) -> None:
    with pytest.raises(ConfigError) as exc:
        node_config_from_dict(with_option(GOOD_NODE, dotted, value))
    assert problem_at(exc, dotted).startswith(POSITIVE)


def test_stale_read_limit_zero_names_its_minimum() -> None:
    with pytest.raises(ConfigError) as exc:
        proxy_config_from_dict(with_option(GOOD_PROXY, "stale_read_limit", "0s"))
    assert problem_at(exc, "stale_read_limit").startswith("must be at least 3s")


def test_small_positive_durations_are_accepted() -> None:
    config = proxy_config_from_dict(with_option(GOOD_PROXY, "health.interval", "1ms"))
    assert config.health_interval == pytest.approx(0.001)


# --- every flag of the node is a key too ----------------------------------------------------


def test_node_vote_timeout_is_a_key() -> None:
    assert node_config_from_dict(GOOD_NODE).vote_timeout == 60.0
    config = node_config_from_dict(with_option(GOOD_NODE, "vote_timeout", "5s"))
    assert config.vote_timeout == 5.0


def test_every_node_flag_is_a_key() -> None:
    """Flags other than the per-run ones (--config, --ready-file) configure the node."""
    import argparse

    from gitquorum.cli import node

    parser = argparse.ArgumentParser()
    node.add_arguments(parser)
    flag_keys = {
        "--listen": "listen",
        "--storage": "storages",
        "--metrics-listen": "metrics_listen",
        "--vote-timeout": "vote_timeout",
        "--token-file": "auth.token_file",
        "--tls-cert": "tls.cert_file",
        "--tls-key": "tls.key_file",
        "--tls-client-ca": "tls.client_ca_file",
        "--tls-ca": "tls.ca_file",
        "--workers": "workers",
    }
    flags = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
    # --worker-*: set by a pooled node on its workers' command lines.
    per_run = {"--help", "--config", "--ready-file", "--worker-index", "--worker-count"}
    per_run |= {"--worker-listen"}
    assert flags - per_run == set(flag_keys)
    # Each key is accepted in a file (an unknown one would be a problem).
    for key in flag_keys.values():
        value: Any = "/etc/gitquorum/f" if key.endswith("_file") else "5s"
        if key in ("listen", "metrics_listen"):
            value = "127.0.0.1:1"
        if key == "workers":
            value = 2
        if key == "storages":
            value = GOOD_NODE["storages"]
        data = with_option(GOOD_NODE, key, value)
        if key == "tls.cert_file":
            data["tls"]["key_file"] = "/etc/gitquorum/k"
        if key == "tls.key_file":
            data["tls"]["cert_file"] = "/etc/gitquorum/c"
        if key == "tls.client_ca_file":
            data["tls"].update(cert_file="/etc/gitquorum/c", key_file="/etc/gitquorum/k")
        node_config_from_dict(data)


# --- Praefect's and Gitaly's files ----------------------------------------------------------

PRAEFECT_TOML = textwrap.dedent(
    """\
    listen_addr = "0.0.0.0:2305"
    prometheus_listen_addr = "0.0.0.0:9652"
    graceful_stop_timeout = "1m"

    [auth]
    token = "secret"

    [failover]
    enabled = true

    [database]
    host = "db.internal"

    [[virtual_storage]]
    name = "default"

    [[virtual_storage.node]]
    storage = "gitaly-1"
    address = "tcp://gitaly-1.internal:8075"
    token = "node-secret"
    """
)

GITALY_TOML = textwrap.dedent(
    """\
    listen_addr = "0.0.0.0:8075"
    bin_dir = "/opt/gitaly"

    [[storage]]
    name = "default"
    path = "/var/opt/gitlab/git-data/repositories"
    """
)


@pytest.mark.parametrize(
    ("loader", "text", "who", "expected"),
    [
        (
            load_proxy_config,
            PRAEFECT_TOML,
            "Praefect",
            {
                "listen_addr": "use `listen`",
                "prometheus_listen_addr": "use `metrics_listen`",
                "graceful_stop_timeout": "use `graceful_timeout`",
                "auth.token": "use `auth.token_file`",
                "failover": "remove: failover is always on",
                "database": "use `etcd.endpoints`",
                "virtual_storage": "use `virtual_storages`",
            },
        ),
        (
            load_node_config,
            GITALY_TOML,
            "Gitaly",
            {"listen_addr": "use `listen`", "storage": "use `storages`", "bin_dir": "remove"},
        ),
    ],
    ids=["praefect", "gitaly"],
)
def test_toml_file_is_recognised_and_each_option_renamed(
    tmp_path: Path, loader: Any, text: str, who: str, expected: dict[str, str]
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        loader(path)
    assert all(p.startswith(f"{path}: ") for p in exc.value.problems)
    stripped = [p.removeprefix(f"{path}: ") for p in exc.value.problems]
    assert stripped[0].startswith(f"<root>: a {who} configuration (TOML): gitquorum reads YAML")
    hints = {p.partition(": ")[0]: p.partition(": ")[2] for p in stripped[1:]}
    for key, hint in expected.items():
        assert hints[key].startswith(hint), (key, hints)


def test_praefect_keys_in_yaml_are_recognised() -> None:
    data = {
        "listen_addr": "0.0.0.0:2305",
        "virtual_storage": [{"name": "default", "node": [{"storage": "n1", "address": "a:1"}]}],
        "failover": {"enabled": True},
        "etcd": {"endpoints": ["127.0.0.1:2379"]},
        "auth": {"token": "x"},
        "tls": {"certificate_path": "/c", "key_path": "/k"},
    }
    with pytest.raises(ConfigError) as exc:
        proxy_config_from_dict(data)
    root = problem_at(exc, "<root>")
    assert root.startswith("this looks like a Praefect configuration")
    assert "virtual_storage" in root and "listen_addr" in root
    assert problem_at(exc, "listen_addr") == "unknown option: use `listen` (host:port)"
    assert problem_at(exc, "virtual_storage").startswith("unknown option: use `virtual_storages`")
    assert problem_at(exc, "failover").startswith("unknown option: remove: failover is always on")
    assert problem_at(exc, "auth.token").startswith("unknown option: use `auth.token_file`")
    assert problem_at(exc, "tls.certificate_path") == "unknown option: use `tls.cert_file`"
    assert problem_at(exc, "tls.key_path") == "unknown option: use `tls.key_file`"


def test_gitquorum_files_are_not_called_foreign() -> None:
    proxy_config_from_dict(GOOD_PROXY)
    node_config_from_dict(GOOD_NODE)
    with pytest.raises(ConfigError) as exc:
        proxy_config_from_dict(with_option(GOOD_PROXY, "typo", 1))
    assert exc.value.problems == ["typo: unknown option"]


# --- problems name the file and the line ----------------------------------------------------

PROXY_YAML = textwrap.dedent(
    """\
    listen: 127.0.0.1:2305
    etcd:
      endpoints: [127.0.0.1:2379]
    virtual_storages:
      - name: default
        nodes:
          - {storage: n1, address: 127.0.0.1:8075}
          - {storage: n2}
    election:
      ttl: 0s
    vote_timeout: -1s
    """
)


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        (":10", "election.ttl: " + POSITIVE),
        (":11", "vote_timeout: " + POSITIVE),
        # A missing option: the line of the list item it is missing from.
        (":8", "virtual_storages.0.nodes.1.address: required"),
    ],
)
def test_problems_name_the_file_and_line(tmp_path: Path, where: str, problem: str) -> None:
    path = tmp_path / "proxy.yml"
    path.write_text(PROXY_YAML)
    with pytest.raises(ConfigError) as exc:
        load_proxy_config(path)
    assert any(p.startswith(f"{path}{where}: {problem}") for p in exc.value.problems), (
        exc.value.problems
    )


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "node.yml"
    path.write_text("listen: 127.0.0.1:1\nstorages:\n  - {name: a, path: /a\n")
    with pytest.raises(ConfigError) as exc:
        load_node_config(path)
    assert exc.value.problems[0].startswith(f"{path}:")
    assert exc.value.problems[0].split(":")[1].isdigit()


def test_config_validate_reports_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yml"
    path.write_text(PROXY_YAML)
    kind, found = config_cmd.validate(str(path), None)
    assert kind == "proxy"
    assert any(p.startswith(f"{path}:10: election.ttl: {POSITIVE}") for p in found), found
    toml = tmp_path / "config.toml"
    toml.write_text(PRAEFECT_TOML)
    _kind, found = config_cmd.validate(str(toml), None)
    assert "Praefect configuration (TOML)" in found[0]
