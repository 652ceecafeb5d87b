"""gitquorum: replicated git storage behind one Gitaly-compatible endpoint."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from gitquorum import __version__
from gitquorum.cli.arguments import Parser, parse

# subcommand -> (module under gitquorum.cli, one-line help). Each module has
# add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("up", "start a whole local cluster (etcd, nodes, proxy, HTTP gateway)"),
    "node": ("node", "run a storage node"),
    "proxy": ("proxy", "run a proxy (the client-facing endpoint)"),
    "git-ssh": ("git_ssh", "GIT_SSH_COMMAND helper: git over SSHUploadPack/SSHReceivePack"),
    "http": ("http", "smart-HTTP gateway for the git CLI"),
    "config": ("config_cmd", "validate configuration files"),
    # Operator commands (admin_*.py); they read the proxy's --config.
    "status": ("admin_status", "proxies, leader, node health, queue depth and replica lag"),
    "list-storages": (
        "admin_list_storages",
        "virtual storages and their nodes: address, health, drain, primaries, replicas",
    ),
    "history": (
        "admin_history",
        "failovers, switchovers and verifier verdicts: when primaries changed, and why",
    ),
    "check": ("admin_check", "check etcd, proxies, nodes, disks and clocks; exit 1 on failure"),
    "dataloss": ("admin_dataloss", "list repositories without a healthy, up-to-date replica"),
    "accept-dataloss": (
        "admin_accept_dataloss",
        "make one replica authoritative and writable again; repair the others from it",
    ),
    "metadata": ("admin_metadata", "show a repository's id, primary, generation and replicas"),
    "set-replication-factor": (
        "admin_set_replication_factor",
        "assign or unassign nodes to reach a repository's replication factor",
    ),
    "track-repository": (
        "admin_track_repository",
        "adopt a repository found on a node's disk but not tracked in etcd",
    ),
    "list-untracked-repositories": (
        "admin_list_untracked",
        "list git repositories on this host's node disks that etcd does not track",
    ),
    "remove-repository": (
        "admin_remove_repository",
        "remove a repository from etcd and every node (dry run without --apply)",
    ),
    "verify": ("admin_verify", "have the verifier re-check replicas now"),
    "switchover": ("admin_switchover", "move primaries to another node without failing writes"),
    "drain": ("admin_drain", "stop new primaries and reads on a node; move its primaries away"),
    "undrain": ("admin_drain", "return a drained node to service"),
    "pause": ("admin_pause", "pause automatic failover and repair for maintenance"),
    "resume": ("admin_pause", "resume automatic failover and repair"),
    "repo": ("repo", "create, list, remove and inspect repositories"),
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(f"gitquorum.cli.{COMMANDS[name][0]}")


def build_parser(only: str | None = None) -> Parser:
    """The parser; with ``only``, just that subcommand's module is imported.

    Importing every subcommand costs a third of a second, and git starts the
    ``git-ssh`` helper twice per operation, so dispatch imports lazily.
    """
    parser = Parser(prog="gitquorum", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gitquorum {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_module, summary) in COMMANDS.items():
        command = sub.add_parser(name, help=summary, description=summary)
        if only is None or name == only:
            module = _load(name)
            module.add_arguments(command)
            command.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> None:
    args_list = sys.argv[1:] if argv is None else argv
    only = args_list[0] if args_list and args_list[0] in COMMANDS else None
    parser = build_parser(only)
    args = parse(parser, args_list)
    sys.exit(args._module.run(args))


if __name__ == "__main__":
    main()
