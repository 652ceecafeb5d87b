"""The child-process helpers' pure parts: ready files and exit descriptions."""

from __future__ import annotations

import signal

import pytest

from gitquorum.launch.process import describe_exit, parse_ready


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("127.0.0.1:5000", None),  # still being written: no newline yet
        ("127.0.0.1:5000\n", ("127.0.0.1:5000", 0)),
        ("127.0.0.1:5000 9100\n", ("127.0.0.1:5000", 9100)),
        ("127.0.0.1:5000 -\n", ("127.0.0.1:5000", 0)),
        ("\n", None),
    ],
)
def test_parse_ready(text: str, expected: tuple[str, int] | None) -> None:
    assert parse_ready(text) == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (None, "running"),
        (0, "exited with status 0"),
        (3, "exited with status 3"),
        (-int(signal.SIGKILL), "killed by SIGKILL"),
        (-200, "killed by signal 200"),
    ],
)
def test_describe_exit(code: int | None, expected: str) -> None:
    assert describe_exit(code) == expected
