"""How every ``gitquorum`` command prints: one table renderer, one cell format.

Columns are left-aligned and two spaces apart, rows carry no trailing blanks,
and an empty cell reads ``-``: the same look in every command, so a person
scanning ``status``, ``repo list`` or ``switchover`` reads them the same way.
"""

from __future__ import annotations

from collections.abc import Sequence


def cell_text(value: object) -> str:
    """A cell as text: None is "-", booleans yes/no, collections comma-separated."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple | set | frozenset):
        items = (
            sorted(map(str, value)) if isinstance(value, set | frozenset) else list(map(str, value))
        )
        return ",".join(items) if items else "-"
    return str(value)


def table(
    headers: Sequence[str] | None, rows: Sequence[Sequence[object]], *, indent: str = ""
) -> str:
    """A plain-text table: left-aligned columns, two spaces apart, no trailing blanks.

    ``headers`` None prints the rows alone (a key/value listing); ``indent``
    prefixes every line.
    """
    cells = [[cell_text(c) for c in row] for row in rows]
    if headers is not None:
        cells.insert(0, [str(h) for h in headers])
    if not cells:
        return ""
    columns = max(len(row) for row in cells)
    widths = [
        max((len(row[i]) for row in cells if i < len(row)), default=0) for i in range(columns)
    ]
    return "\n".join(
        (indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))).rstrip()
        for row in cells
    )
