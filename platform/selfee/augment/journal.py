"""Nothing lost, nothing twice: the journal that makes augmentation resumable.

Each finished Chain row is appended to ``journal.jsonl`` by the driver (one writer, so a
cluster needs no shared file system) and flushed at once. A crash or Ctrl-C loses at most
the rows in flight; a torn last line is cut off on reopen. ``chains.jsonl`` is rebuilt from
the journal at the end of every run: every input id exactly once, in input order, the latest
attempt winning (so ``--retry-errors`` replaces an error row with its retry).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from selfee.config import ConfigError
from selfee.records import write_jsonl

JOURNAL = "journal.jsonl"
CHAINS = "chains.jsonl"
STATE = "state.json"
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


def check_settings(out_dir: Path, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix rows made with different teacher settings in one output folder."""
    state_path = out_dir / STATE
    if overwrite:
        for name in (JOURNAL, CHAINS, STATE):
            target = out_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    if state_path.exists():
        try:
            previous = json.loads(state_path.read_text()).get("settings", {})
        except (OSError, json.JSONDecodeError):
            previous = None
        if previous is not None and previous != settings:
            changed = sorted(k for k in settings.keys() | previous.keys()
                             if settings.get(k) != previous.get(k))  # fmt: skip
            raise ConfigError(
                f"{out_dir} holds chains made with other settings (different: "
                f"{', '.join(changed)}); continue with the same settings, pick another --output, or pass "
                "--overwrite to discard them"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path.write_text(json.dumps({"settings": settings}, indent=2) + "\n")


def pending(
    inputs: Iterable[dict[str, Any]], done: dict[str, dict[str, Any]], retry_errors: bool
) -> list[dict[str, Any]]:
    """Input rows still to run: never run, or (with ``retry_errors``) ended with an error."""
    return [
        row
        for row in inputs
        if row["id"] not in done or (retry_errors and done[row["id"]].get("error"))
    ]


def finalize(
    out_dir: Path, inputs: list[dict[str, Any]], done: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Write ``chains.jsonl``: one row per input id that has run, in input order; compact
    the journal to the same rows so it does not grow with every retry."""
    rows = [done[row["id"]] for row in inputs if row["id"] in done]
    write_jsonl(out_dir / CHAINS, rows)
    ids = {row["id"] for row in rows}
    extra = [row for key, row in done.items() if key not in ids]
    write_jsonl(out_dir / JOURNAL, [*rows, *extra])  # rows of other inputs stay resumable
    return rows
