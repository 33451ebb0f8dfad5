"""Append-only JSON Lines journals: results saved the moment they exist, read back after a crash.

One writer (the driver) appends a row per finished item and flushes it at once; a crash or
Ctrl-C loses only the items in flight. A line torn by a crash (even inside a multi-byte
character) is skipped when read and cut off before the next append. Rows are checked
against their contract (a pydantic model) before they are trusted: a row that fails is
skipped, counted, and its item runs again. Later rows for the same ``id`` win.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, ValidationError

FSYNC_EVERY_S = 2.0


@dataclass
class JournalRows:
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # id → latest valid row
    unreadable: int = 0  # lines that are not JSON (torn by a crash, or not UTF-8)
    invalid: int = 0  # JSON rows that break the contract: their items run again

    @property
    def skipped(self) -> int:
        return self.unreadable + self.invalid

    def describe(self, path: Path) -> str:
        """One line for the log, or "" when nothing was skipped."""
        if not self.skipped:
            return ""
        return (
            f"{path}: skipped {self.unreadable} unreadable line(s) (a crash mid-write) and "
            f"{self.invalid} row(s) that break their contract; their items run again"
        )


def read_journal(path: Path, contract: type[BaseModel] | None = None) -> JournalRows:
    """The rows of a journal, each checked against ``contract`` when given."""
    found = JournalRows()
    if not path.exists():
        return found
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                found.unreadable += 1
                continue
            if not isinstance(row, dict) or not isinstance(row.get("id"), str):
                found.invalid += 1
                continue
            if contract is not None:
                try:
                    contract.model_validate(row)
                except ValidationError:
                    found.invalid += 1
                    found.rows.pop(row["id"], None)  # an earlier valid row is superseded
                    continue
            found.rows[row["id"]] = row
    return found


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
