"""docs/metrics.md and docs/runbook.md as the acceptance tests read them, and
the gitquorum_* metrics a running process exposes.

The metrics reference table has one row per metric: the name, type, labels
(in backticks, "—" for none), the exporting components (proxy, node, http;
"proxy (leader)" counts as proxy), when samples appear, and the meaning.
"""

from __future__ import annotations

import functools
import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

DOCS = Path(__file__).resolve().parents[2] / "docs"
COMPONENTS = ("proxy", "node", "http")


@dataclass(frozen=True)
class MetricDoc:
    name: str
    type: str
    labels: frozenset[str]
    components: frozenset[str]
    appears: str


_ROW = re.compile(r"^\|\s*`(gitquorum_[a-z0-9_]+)`\s*\|(.*)\|\s*$")


@functools.cache
def documented_metrics() -> dict[str, MetricDoc]:
    metrics: dict[str, MetricDoc] = {}
    for line in (DOCS / "metrics.md").read_text().splitlines():
        match = _ROW.match(line)
        if not match:
            continue
        cells = [c.strip() for c in match.group(2).split("|")]
        kind, labels, exporters, appears = cells[0], cells[1], cells[2], cells[3]
        components = frozenset(c for c in COMPONENTS if re.search(rf"\b{c}\b", exporters))
        name = match.group(1)
        assert name not in metrics, f"{name} documented twice"
        assert components, f"{name}: no exporter among {COMPONENTS}"
        metrics[name] = MetricDoc(
            name, kind, frozenset(re.findall(r"`([a-z_]+)`", labels)), components, appears
        )
    return metrics


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    text = (DOCS / "runbook.md").read_text()
    return {github_anchor(h) for h in re.findall(r"^#{1,6}\s+(.+)$", text, re.MULTILINE)}


# -- what a process exposes ----------------------------------------------------------------


@dataclass
class Exposition:
    """gitquorum_* metrics seen on one component's /metrics, accumulated over scrapes."""

    # Documented-style name (counters with _total) -> Prometheus type.
    families: dict[str, str] = field(default_factory=dict)
    # Name -> label names seen on its samples (histogram ``le`` excluded).
    labels: dict[str, set[str]] = field(default_factory=dict)
    # Names that had at least one sample.
    sampled: set[str] = field(default_factory=set)

    def add(self, text: str) -> None:
        families = [
            f for f in text_string_to_metric_families(text) if f.name.startswith("gitquorum_")
        ]
        bases = {f.name for f in families if f.type in ("counter", "histogram")}
        for family in families:
            # The client adds a <name>_created gauge per counter and histogram.
            if family.type == "gauge" and family.name.endswith("_created"):
                if family.name[: -len("_created")] in bases:
                    continue
            name = f"{family.name}_total" if family.type == "counter" else family.name
            self.families[name] = family.type
            self.labels.setdefault(name, set())
            for sample in family.samples:
                self.sampled.add(name)
                self.labels[name].update(k for k in sample.labels if k != "le")


def scrape(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> str:
    url = f"http://{host}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
    return body.decode()
