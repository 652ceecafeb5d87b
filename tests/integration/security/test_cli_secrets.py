"""Secrets never on the command line, and refused configurations fail at start.

No command takes a secret's value as an argument (other users read argv in
``ps``): every option about a token, secret or password names a file. Bad
secret settings stop a node or a proxy before it serves, with exit code 2.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gitquorum.cli.main import build_parser

CLI = [sys.executable, "-m", "gitquorum.cli.main"]
SECRET_WORDS = re.compile(r"token|secret|passw", re.IGNORECASE)


def _parsers(
    parser: argparse.ArgumentParser, path: str = "gitquorum"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_no_option_takes_a_secret_value() -> None:
    seen = []
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            for option in action.option_strings:
                if SECRET_WORDS.search(option):
                    seen.append(f"{path} {option}")
                    assert option.endswith("-file"), f"{path} {option} takes a secret value"
    # The options that exist name files: clients', nodes', the gateway's, up's.
    assert {"gitquorum node --token-file", "gitquorum up --token-file"} <= set(seen)
    assert "gitquorum http --proxy-token-file" in seen


@pytest.mark.parametrize("command", ["node", "proxy", "http", "up", "git-ssh"])
def test_help_offers_no_secret_value_flag(command: str) -> None:
    text = subprocess.run(
        [*CLI, command, "--help"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    options = set(re.findall(r"(?<![\w-])--?[a-z][a-z0-9-]*", text))
    for option in options:
        if SECRET_WORDS.search(option):
            assert option.endswith("-file"), f"{command} {option}"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_node_refuses_unusable_secrets(tmp_path: Path) -> None:
    base = ["node", "--listen", "127.0.0.1:0", "--storage", f"s={tmp_path / 's'}"]
    missing = _run(*base, "--token-file", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    blank = _run(*base, "--token-file", str(empty))
    assert blank.returncode == 2 and "holds no secret" in blank.stderr
    unset = _run(*base, env={"GITQUORUM_NODE_TOKEN": ""})
    assert unset.returncode == 2 and "GITQUORUM_NODE_TOKEN is set but empty" in unset.stderr
    with_config = _run("node", "--config", str(tmp_path / "x.yaml"), "--token-file", str(empty))
    assert (
        with_config.returncode == 2 and "--token-file: set it in the --config" in with_config.stderr
    )
    bad_cert = _run(*base, "--tls-cert", str(empty), "--tls-key", str(empty))
    assert bad_cert.returncode == 2 and "not a PEM file" in bad_cert.stderr


def test_proxy_refuses_one_secret_for_clients_and_nodes(tmp_path: Path) -> None:
    """A client holding the node secret could call nodes directly: not allowed."""
    client, node = tmp_path / "client", tmp_path / "node"
    client.write_text("shared-secret\n")
    node.write_text("new-node-secret\nshared-secret\n")
    config = tmp_path / "proxy.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                # Never reached: the secrets are checked first.
                "etcd": {"endpoints": ["127.0.0.1:1"]},
                "virtual_storages": [
                    {"name": "default", "nodes": [{"storage": "n1", "address": "127.0.0.1:1"}]}
                ],
                "auth": {"token_file": str(client), "node_token_file": str(node)},
            }
        )
    )
    result = _run("proxy", "--config", str(config))
    assert result.returncode == 2
    assert "must differ" in result.stderr and "shared-secret" not in result.stderr
    # From the environment too.
    config.write_text(config.read_text().replace(f"token_file: {client}", "token_file: ''"))
    from_env = _run("proxy", "--config", str(config), env={"GITQUORUM_TOKEN": "shared-secret"})
    assert from_env.returncode == 2 and "must differ" in from_env.stderr


def test_up_checks_its_token_file(tmp_path: Path) -> None:
    two_words = tmp_path / "token"
    two_words.write_text("two words\n")
    result = _run("up", "--token-file", str(two_words), "--json")
    assert result.returncode == 2 and "expected one secret without blanks" in result.stderr
    missing = _run("up", "--token-file", str(tmp_path / "missing"), "--json")
    assert missing.returncode == 2 and "cannot read" in missing.stderr
