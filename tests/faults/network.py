"""Network paths of the fault suite (placeholder until the relays land)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.faults.base import Nemesis

if TYPE_CHECKING:
    from tests.faults.cluster import FaultCluster


class Paths:
    def proxy_config(
        self, cluster: FaultCluster, proxy: str, config: dict[str, object]
    ) -> dict[str, object]:
        return config

    def close(self) -> None:
        pass


NEMESES: list[type[Nemesis]] = []
