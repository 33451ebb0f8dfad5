"""Appending a benchmark's rows to bench/RESULTS.md under its own section header."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

# $SELFEE_BENCH_RESULTS: another file (the tests run a benchmark without touching this one)
RESULTS = Path(os.environ.get("SELFEE_BENCH_RESULTS") or Path(__file__).with_name("RESULTS.md"))


def machine() -> str:
    """Architecture, processor and cores: one x86_64 VM with 2 cores has been an Intel Xeon
    with AMX one day and an AVX2-only AMD EPYC at half its speed another."""
    return ", ".join(filter(None, [platform.machine(), cpu_name(), f"{os.cpu_count()} cores"]))


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's model name and its widest vector instructions (Linux), else ""."""
    try:
        info = cpuinfo.read_text()
    except OSError:
        return ""
    names = re.findall(r"^model name\s*:\s*(.+)$", info, re.MULTILINE)
    flags = set(next(iter(re.findall(r"^flags\s*:\s*(.+)$", info, re.MULTILINE)), "").split())
    vector = next((f.upper() for f in ("amx_tile", "avx512f", "avx2") if f in flags), "")
    vector = {"AMX_TILE": "AMX", "AVX512F": "AVX512"}.get(vector, vector)
    name = " ".join(names[0].split()) if names else ""
    return f"{name} ({vector})" if name and vector else name or vector


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
