"""Entry point: dispatch to the subcommand modules."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module under gitquorum.cli (each has add_arguments(parser) and run(args) -> int)
COMMANDS: dict[str, str] = {
    "node": "node",
    "git-ssh": "git_ssh",
    "config": "config_cmd",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gitquorum", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"gitquorum.cli.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"gitquorum.cli.{module_name}":
                continue
            raise
        command = sub.add_parser(name, help=module.__doc__.splitlines()[0] if module.__doc__ else None)
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    sys.exit(args._module.run(args))


if __name__ == "__main__":
    main()
