"""Nothing lost, nothing twice: resuming augmentation from its journal.

Each finished Chain row is appended to ``journal.jsonl`` by the driver (``selfee.journal``;
one writer, so a cluster needs no shared file system). ``chains.jsonl`` is rebuilt from the
journal at the end of every run: every input id exactly once, in input order, the latest
attempt winning (so ``--retry-errors`` replaces an error row with its retry).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from selfee.config import with_new_names
from selfee.errors import ConfigError
from selfee.records import write_jsonl

JOURNAL = "journal.jsonl"
CHAINS = "chains.jsonl"
STATE = "state.json"


def check_settings(
    out_dir: Path, settings: dict[str, Any], overwrite: bool, renamed: dict[str, str] | None = None
) -> None:
    """Refuse to mix rows made with different teacher settings in one output folder
    (``renamed``: keys renamed since, old name -> new)."""
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
            previous = with_new_names(previous, renamed or {})
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
