"""Plain-text tables for the terminal (``plugins``, ``agents``)."""

from __future__ import annotations

from collections.abc import Sequence


def print_table(rows: Sequence[Sequence[str]], indent: str = "") -> None:
    """Columns padded to their widest cell; the last one is not."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        print(indent + "  ".join([*cells, row[-1]]).rstrip())
