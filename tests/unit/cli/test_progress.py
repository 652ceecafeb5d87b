"""Progress lines: on a terminal only, never with --json."""

from __future__ import annotations

import argparse
import io

from gitquorum.cli.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_shown_on_a_terminal_and_erased_at_the_end() -> None:
    out = Terminal()
    with Progress("moving primaries", 3, stream=out) as progress:
        for done in range(1, 4):
            progress.update(done)
    text = out.getvalue()
    assert "moving primaries: 3/3" in text
    assert text.endswith("\r\x1b[K")


def test_quiet_when_not_a_terminal_or_with_json() -> None:
    piped = io.StringIO()
    with Progress("verifying", 10, stream=piped) as progress:
        progress.update(5)
    assert piped.getvalue() == ""
    json_args = argparse.Namespace(json=True)
    assert not Progress.of(json_args, "x").enabled
