"""A short coverage-guided run of every atheris target (skipped without atheris).

``tests/fuzz/atheris_targets.py`` documents how to run them for longer.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris is not installed"
)


def test_atheris_targets() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.atheris_targets", "all", "-runs=10000", "-seed=1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # libFuzzer exits non-zero and prints the crashing input on any failure.
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Done 10000 runs" in proc.stderr, proc.stderr[-2000:]
