"""Append-only JSON Lines journals: results saved the moment they exist, read back after a crash.

One writer (the driver) appends a row per finished item and flushes it at once; a crash or
Ctrl-C loses only the items in flight. A line torn by a crash is skipped when read and cut
off before the next append. Later rows for the same ``id`` win.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, TextIO

FSYNC_EVERY_S = 2.0


def read_journal(path: Path) -> tuple[dict[str, dict[str, Any]], int]:
    """(id → latest row, number of unreadable lines skipped)."""
    rows: dict[str, dict[str, Any]] = {}
    bad = 0
    if not path.exists():
        return rows, bad
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows[row["id"]] = row
            except (json.JSONDecodeError, KeyError, TypeError):
                bad += 1
    return rows, bad


class Journal:
    """Append-only, flushed per row, fsynced every couple of seconds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        _cut_torn_tail(path)
        self._file: TextIO = open(path, "a", encoding="utf-8")
        self._synced_at = time.monotonic()

    def write(self, row: dict[str, Any]) -> None:
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        if time.monotonic() - self._synced_at > FSYNC_EVERY_S:
            os.fsync(self._file.fileno())
            self._synced_at = time.monotonic()

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cut_torn_tail(path: Path) -> None:
    """A crash mid-write leaves a line without its newline: drop it before appending."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)
