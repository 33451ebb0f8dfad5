"""Plain-text tables for the reports a terminal shows."""

from __future__ import annotations


def columns(rows: list[list[str]]) -> list[str]:
    """Rows of cells as aligned lines, a rule under the first (the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out
