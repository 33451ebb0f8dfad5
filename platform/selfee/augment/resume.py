"""Nothing lost, nothing twice: resuming augmentation from its journal.

Each finished Chain row is appended to ``journal.jsonl`` by the driver (``selfee.journal``;
one writer, so a cluster needs no shared file system). ``chains.jsonl`` is rebuilt from the
journal at the end of every run: every input id exactly once, in input order, the latest
attempt winning (so ``--retry-errors`` replaces an error row with its retry).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from selfee.lineage import MANIFEST
from selfee.records import write_jsonl
from selfee.stage import keep_settings, remove

JOURNAL = "journal.jsonl"
CHAINS = "chains.jsonl"
STATE = "state.json"  # the settings, before the manifest kept them


def check_settings(
    out_dir: Path,
    settings: dict[str, Any],
    overwrite: bool,
    renamed: dict[str, str] | None = None,
    label: str = "augment",
) -> None:
    """Refuse to mix rows made with different teacher settings in one output folder
    (``renamed``: keys renamed since, old name -> new). The settings go in the manifest."""
    if overwrite:
        remove([out_dir / name for name in (JOURNAL, CHAINS, STATE, MANIFEST, "summary.json")])

    def refusal(changed: list[str]) -> str:
        return (
            f"{out_dir} holds chains made with other settings (different: {', '.join(changed)});"
            " continue with the same settings, pick another --output, or pass --overwrite to "
            "discard them"
        )

    keep_settings(out_dir / MANIFEST, label, settings, renamed or {}, refusal,
                  lambda: _state_file(out_dir))  # fmt: skip


def _state_file(out_dir: Path) -> dict[str, Any] | None:
    """Where releases before the manifest kept the settings (read for one release)."""
    try:
        settings = json.loads((out_dir / STATE).read_text()).get("settings")
    except (OSError, ValueError, AttributeError):
        return None
    return {"settings": settings} if isinstance(settings, dict) else None


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
