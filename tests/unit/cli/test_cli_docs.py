"""docs/ and ``--help`` stay in step: every flag the docs give a command exists, and
every option of an operator command is documented in docs/cli.md."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from gitquorum.cli.main import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parents[3]
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
CLI_DOC = ROOT / "docs" / "cli.md"
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
INLINE = re.compile(r"`([^`\n]*\bgitquorum [^`\n]*)`")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


PARSER = build_parser()
PARSERS = _subparsers(PARSER)


def documented_options(parser: argparse.ArgumentParser) -> set[str]:
    """Long options shown by --help (hidden deprecated spellings excluded)."""
    return {
        option
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
        if option.startswith("--")
    }


def command_uses(text: str) -> list[tuple[str, str, list[str]]]:
    """(command, the text it was named in, flags) of each `gitquorum CMD ...` in ``text``."""
    spans = INLINE.findall(text)
    in_block = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif in_block and "gitquorum " in line:
            spans.append(line)
    uses = []
    for span in spans:
        # Each shell command on its own: `a | b`, `a && b`, `a; b`.
        for part in re.split(r"\|\||&&|\||;", span):
            words = part.split()
            if "gitquorum" not in words:
                continue
            rest = words[words.index("gitquorum") + 1 :]
            if not rest or rest[0] not in COMMANDS:
                continue
            name, parser = rest[0], PARSERS[rest[0]]
            nested = _subparsers(parser)
            if nested and len(rest) > 1 and rest[1] in nested:
                name, parser = f"{rest[0]} {rest[1]}", nested[rest[1]]
            uses.append((name, part.strip(), FLAG.findall(" ".join(rest))))
    return uses


def parser_of(name: str) -> argparse.ArgumentParser:
    parser = PARSERS[name.split()[0]]
    if " " in name:
        parser = _subparsers(parser)[name.split()[1]]
    return parser


USES = [
    pytest.param(name, flags, id=f"{doc.name}: {span}")
    for doc in DOCS
    for name, span, flags in command_uses(doc.read_text())
    if flags
]


def test_the_docs_name_commands_with_flags() -> None:
    assert len(USES) > 30  # the extraction found the examples


@pytest.mark.parametrize(("name", "flags"), USES)
def test_every_flag_in_the_docs_exists(name: str, flags: list[str]) -> None:
    parser = parser_of(name)
    options = documented_options(parser)
    nested = _subparsers(parser)
    for sub in nested.values():  # `gitquorum repo --virtual-storage` style mentions
        options |= documented_options(sub)
    unknown = [f for f in flags if f not in options]
    assert not unknown, f"gitquorum {name} has no {unknown} (options: {sorted(options)})"


def _sections(text: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    title = ""
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
        sections[title] = sections.get(title, "") + line + "\n"
    return sections


OPERATOR_COMMANDS = [n for n, (module, _) in COMMANDS.items() if module.startswith("admin_")]


@pytest.mark.parametrize("name", OPERATOR_COMMANDS)
def test_every_operator_option_is_documented_in_cli_md(name: str) -> None:
    sections = _sections(CLI_DOC.read_text())
    [section] = [
        body for title, body in sections.items() if name in [t.strip() for t in title.split("/")]
    ] or [""]
    assert section, f"docs/cli.md has no section for {name}"
    common = set(FLAG.findall(sections["Common to every command"]))
    named = set(FLAG.findall(section)) | common
    missing = sorted(documented_options(PARSERS[name]) - named - {"--help"})
    assert not missing, f"docs/cli.md does not document {missing} of gitquorum {name}"
