"""Argument parsing every ``gitquorum`` command shares.

* :class:`Parser` answers a mistyped command or option with the nearest
  valid one and the usage of the (sub)command it was typed for;
* :func:`duration` is the one type of every duration flag: ``10s``,
  ``500ms``, ``2m``, ``6h``, or a bare number of seconds;
* :func:`add_deprecated_alias` keeps an old option spelling working, with a
  warning that names the new one.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)'")


def nearest(word: str, candidates: Sequence[str]) -> str | None:
    """The candidate closest to ``word`` (difflib), if any is close enough."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return matches[0] if matches else None


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors suggest the nearest command or option.

    Every parser records itself in the namespace (``_parser``): the innermost
    subcommand's parser wins, so :func:`parse` can report an unknown option
    with that subcommand's usage rather than the top-level one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_defaults(_parser=self)

    def choices(self) -> list[str]:
        """Subcommand names this parser accepts (empty without subcommands)."""
        names: list[str] = []
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                names.extend(action.choices)
        return names

    def options(self) -> list[str]:
        return [o for a in self._actions for o in a.option_strings if o.startswith("--")]

    def error(self, message: str) -> NoReturn:
        match = _INVALID_CHOICE.search(message)
        if match:
            guess = nearest(match.group(1), self.choices())
            message = f"unknown command {match.group(1)!r}" + (
                f"; did you mean {guess!r}?"
                if guess
                else f" (choose from {', '.join(self.choices())})"
            )
        super().error(message)

    def unknown(self, extras: Sequence[str]) -> NoReturn:
        """Report arguments nobody recognised, suggesting the nearest options."""
        hints = []
        for extra in extras:
            flag = extra.split("=", 1)[0]
            if flag.startswith("--") and (guess := nearest(flag, self.options())):
                hints.append(f"{guess} for {flag}" if len(extras) > 1 else guess)
        message = f"unrecognized arguments: {' '.join(extras)}"
        if hints:
            message += f" (did you mean {', '.join(hints)}?)"
        self.error(message)


def parse(parser: Parser, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; unknown options are reported by the subcommand they follow."""
    args, extras = parser.parse_known_args(list(argv))
    if extras:
        owner = getattr(args, "_parser", parser)
        (owner if isinstance(owner, Parser) else parser).unknown(extras)
    return args


def duration(value: str) -> float:
    """argparse type of every duration flag: 10s, 500ms, 2m, 6h; a bare number is seconds."""
    from gitquorum.config import parse_duration

    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            return parse_duration(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"{value!r} is not a duration (e.g. 10s, 500ms, 2m, 6h; a bare number is seconds)"
            ) from exc
    try:
        return parse_duration(seconds)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def positive_duration(value: str) -> float:
    """A duration greater than zero (timeouts, deadlines, intervals)."""
    seconds = duration(value)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{value!r}: must be more than zero")
    return seconds


class _Deprecated(argparse.Action):
    """Stores into the new option's destination and warns once on stderr."""

    def __init__(self, *args: Any, replacement: str = "", **kwargs: Any) -> None:
        self.replacement = replacement
        super().__init__(*args, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        print(
            f"warning: {option_string} is deprecated here; use {self.replacement}", file=sys.stderr
        )
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser: argparse.ArgumentParser, old: str, new: str, dest: str) -> None:
    """Accept ``old`` as a hidden spelling of ``new`` (same destination), with a warning."""
    parser.add_argument(
        old,
        dest=dest,
        action=_Deprecated,
        replacement=new,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
    )
