"""The command line behaves the same everywhere: durations, suggestions, usage, aliases."""

from __future__ import annotations

import argparse

import pytest

from gitquorum.cli.arguments import duration, positive_duration
from gitquorum.cli.main import build_parser, main


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10", 10.0), ("2.5", 2.5), ("10s", 10.0), ("500ms", 0.5), ("2m", 120.0), ("6h", 21600.0)],
)
def test_durations_take_units_and_bare_numbers_are_seconds(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["-1", "ten", "10x", "nan", "inf", ""])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)


def test_a_timeout_must_be_more_than_zero() -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        positive_duration("0s")


# Every duration flag of every command takes a unit and a bare number alike.
DURATION_FLAGS = [
    ("status", "--timeout"),
    ("verify", "--wait"),
    ("check", "--max-clock-skew"),
    ("list-untracked-repositories", "--older-than"),
    ("node", "--vote-timeout"),
    ("http", "--timeout"),
    ("http", "--graceful-timeout"),
    ("up", "--timeout"),
]


@pytest.mark.parametrize(("command", "flag"), DURATION_FLAGS)
def test_every_duration_flag_parses_units(command: str, flag: str) -> None:
    parser = build_parser(command)
    required = ["--proxy", "x:1"] if command == "http" else []
    dest = flag.lstrip("-").replace("-", "_")
    for text, seconds in (("10s", 10.0), ("10", 10.0), ("1m", 60.0)):
        args = parser.parse_args([command, *required, flag, text])
        assert getattr(args, dest) == seconds


@pytest.mark.parametrize("action", ["create", "remove", "info", "list"])
def test_repo_timeout_takes_units(action: str) -> None:
    path = [] if action == "list" else ["x.git"]
    args = build_parser("repo").parse_args(["repo", action, "--timeout", "1m", *path])
    assert args.timeout == 60.0


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit:
        main(argv)
    code = exit.value.code
    return code if isinstance(code, int) else 1, capsys.readouterr().err


def test_a_mistyped_command_suggests_the_nearest(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["stauts"], capsys)
    assert code == 2 and "did you mean 'status'?" in err
    code, err = run(["repo", "craete", "x.git"], capsys)
    assert code == 2 and "did you mean 'create'?" in err and "usage: gitquorum repo " in err


def test_a_mistyped_option_suggests_and_prints_the_subcommands_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, err = run(["status", "--jsn"], capsys)
    assert code == 2
    assert err.startswith("usage: gitquorum status ")
    assert "did you mean --json?" in err
    code, err = run(["repo", "info", "--proxi", "h:1", "x.git"], capsys)
    assert code == 2 and "usage: gitquorum repo info " in err and "--proxy" in err


def test_node_without_arguments_names_what_it_needs(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(["node"], capsys)
    assert code == 2 and "usage: gitquorum node " in err
    for flag in ("--config", "--listen", "--storage"):
        assert flag in err.split("error:", 1)[1]


def test_storage_names_a_node_and_the_old_spelling_still_works(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for command in (["repo", "info", "x.git"], ["http", "--proxy", "h:1"]):
        parser = build_parser(command[0])
        new = parser.parse_args([*command, "--virtual-storage", "vs1"])
        assert new.virtual_storage == "vs1"
        assert "deprecated" not in capsys.readouterr().err
        old = parser.parse_args([*command, "--storage", "vs2"])
        assert old.virtual_storage == "vs2"
        assert "--storage is deprecated here; use --virtual-storage" in capsys.readouterr().err
        # --help shows the one spelling to use.
        assert "--storage" not in new._parser.format_help()
