"""Progress of long operations, on a terminal only.

``verify --wait``, ``switchover --from``, ``drain`` and ``track-repository``
of many repositories can take minutes. On a terminal they show one line on
stderr that rewrites itself ("moving primaries: 120/1250"); with ``--json``
or when stderr is not a terminal (a script, a log file, CI) nothing is
written, so the output a program reads is the same either way.
"""

from __future__ import annotations

import argparse
import sys
import time
from types import TracebackType
from typing import TextIO

# Redrawing more often than this only costs the terminal time.
MIN_INTERVAL = 0.1


class Progress:
    def __init__(
        self,
        label: str,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        enabled: bool | None = None,
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _isatty(self.stream) if enabled is None else enabled
        self._shown = False
        self._last = 0.0

    @classmethod
    def of(cls, args: argparse.Namespace, label: str, total: int | None = None) -> Progress:
        """Shown on a terminal, unless the command prints ``--json``."""
        return cls(label, total, enabled=None if not getattr(args, "json", False) else False)

    def update(self, done: int, total: int | None = None, detail: str = "") -> None:
        if total is not None:
            self.total = total
        if not self.enabled:
            return
        now = time.monotonic()
        if self._shown and now - self._last < MIN_INTERVAL and done != self.total:
            return
        self._last = now
        count = f"{done}/{self.total}" if self.total is not None else str(done)
        line = f"{self.label}: {count}" + (f" {detail}" if detail else "")
        # \r back to the line's start, \x1b[K clears what a longer line left.
        self.stream.write(f"\r{line}\x1b[K")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        """Erase the line, so that the result prints where it stood."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
