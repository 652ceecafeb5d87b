"""Check configuration files: every problem at once, with its dotted path.

``gitquorum config validate FILE [--kind node|proxy]`` exits 0 and prints
"ok" for a valid file, or prints each problem and exits 1. Without
``--kind`` the kind is guessed from the file: proxy options (``etcd``,
``virtual_storages``) mean a proxy configuration, anything else a node's.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gitquorum.config import load_node_config, load_proxy_config, load_yaml
from gitquorum.errors import ConfigError

KINDS = ("node", "proxy")
# Options only a proxy configuration has (or Praefect's, for its file); any of
# them decides the guess.
_PROXY_ONLY = ("etcd", "virtual_storages", "virtual_storage", "failover", "database")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="config_action", required=True, metavar="ACTION")
    validate = actions.add_parser(
        "validate", help="check a configuration file and report every problem"
    )
    validate.add_argument("file", metavar="FILE", help="YAML configuration file")
    validate.add_argument(
        "--kind",
        choices=KINDS,
        default=None,
        help="what the file configures (default: guessed from its options)",
    )


def guess_kind(data: Any) -> str:
    if isinstance(data, dict) and any(key in data for key in _PROXY_ONLY):
        return "proxy"
    return "node"


def validate(path: str, kind: str | None) -> tuple[str, list[str]]:
    """The kind checked and one line per problem ("FILE[:LINE]: dotted.path: message")."""
    try:
        data = load_yaml(path)
    except ConfigError as exc:
        # Unreadable or not YAML: these problems already name the file.
        return kind or "node", exc.problems
    kind = kind or guess_kind(data)
    loader = load_proxy_config if kind == "proxy" else load_node_config
    try:
        loader(path)
    except ConfigError as exc:
        # Each problem names the file, and the line where the option is in it.
        return kind, exc.problems
    return kind, []


def run(args: argparse.Namespace) -> int:
    kind, problems = validate(args.file, args.kind)
    if not problems:
        print(f"{args.file}: ok ({kind} configuration)")
        return 0
    for problem in problems:
        print(problem, file=sys.stderr)
    count = len(problems)
    print(
        f"{args.file}: {count} problem{'s' if count != 1 else ''} in {kind} configuration",
        file=sys.stderr,
    )
    return 1
