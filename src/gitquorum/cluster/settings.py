"""Do the live proxies run with the same cluster-wide settings? (a pure rule)

Each proxy publishes ``section -> hash`` of its cluster-wide settings
(gitquorum/config_settings.py) in its membership record. Proxies that
published none run an older version and are reported apart, not as a mismatch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass


def settings_hash(sections: Mapping[str, str]) -> str:
    """One hash of every section (what ``check`` prints when all agree)."""
    text = json.dumps(dict(sorted(sections.items())), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SettingsAgreement:
    # Proxies grouped by identical settings: (hash, proxy names), largest group first.
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    # Sections whose hash is not the same on every proxy that published settings.
    differing: tuple[str, ...]
    # Proxies that published no settings.
    unknown: tuple[str, ...]

    @property
    def agree(self) -> bool:
        return len(self.groups) <= 1


def settings_agreement(published: Mapping[str, Mapping[str, str]]) -> SettingsAgreement:
    """``published``: proxy -> its section hashes (empty when it published none)."""
    known = {proxy: dict(s) for proxy, s in published.items() if s}
    unknown = tuple(sorted(p for p, s in published.items() if not s))
    by_hash: dict[str, list[str]] = {}
    for proxy, sections in sorted(known.items()):
        by_hash.setdefault(settings_hash(sections), []).append(proxy)
    groups = tuple(
        sorted(
            ((h, tuple(names)) for h, names in by_hash.items()),
            key=lambda group: (-len(group[1]), group[1]),
        )
    )
    names = sorted({section for sections in known.values() for section in sections})
    differing = tuple(
        section for section in names if len({s.get(section) for s in known.values()}) > 1
    )
    return SettingsAgreement(groups, differing, unknown)
