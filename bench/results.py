"""Appending a benchmark's rows to bench/RESULTS.md under its own section header."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# $SELFEE_BENCH_RESULTS: another file (the tests run a benchmark without touching this one)
RESULTS = Path(os.environ.get("SELFEE_BENCH_RESULTS") or Path(__file__).with_name("RESULTS.md"))


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores"


def append_rows(section: str, rows: list[str], path: Path = RESULTS) -> None:
    """Add ``rows`` (Markdown table lines) right under ``section`` (created if missing);
    a row already there (the same figures, the same day) is not written twice."""
    if not path.exists():
        path.write_text("# Benchmarks\n")
    text = path.read_text()
    rows = [row for row in rows if row + "\n" not in text]
    if section not in text:
        text += section
    path.write_text(text.replace(section, section + "".join(r + "\n" for r in rows), 1))
