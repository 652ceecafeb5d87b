"""The fault suite's fixtures: the seed chain every repository starts from."""

from __future__ import annotations

from tests.chaos.conftest import chain

__all__ = ["chain"]
