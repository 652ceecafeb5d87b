"""Disks of the fault suite's nodes (placeholder until the disk faults land)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.faults.base import Nemesis

if TYPE_CHECKING:
    from tests.faults.cluster import FaultCluster


class Disks:
    def prepare(self, cluster: FaultCluster) -> None:
        pass

    def close(self, cluster: FaultCluster) -> None:
        pass


NEMESES: list[type[Nemesis]] = []
