"""Shaping: one source file → raw rows → Instruction rows (the per-row work, no Ray).

Ray Data runs ``read_file`` per file and ``shape_batch`` per block; what cannot be read or
shaped becomes a row with a status and a reason, never an exception, so the job can count
it and apply its bad-row policy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from selfee.collect.sources import SOURCES, BadRow, Skip, read_records
from selfee.records import instruction_id


def read_file(task: dict[str, Any]) -> list[dict[str, Any]]:
    """Raw rows of one file, JSON-encoded so that every block has the same Arrow schema.
    What cannot be read becomes a bad row naming its place, never an exception."""
    rows = []

    def add(location: str, raw: Any) -> None:
        if not isinstance(raw, BadRow):
            try:
                raw = json.dumps(raw, ensure_ascii=False, default=str)
            except (RecursionError, ValueError):
                raw = BadRow(f"{location}: a row nested too deeply to read")
        bad = isinstance(raw, BadRow)
        rows.append({"source": task["source"], "order": task["order"], "location": location,
                     "raw": str(raw) if bad else raw, "bad": bad})  # fmt: skip

    try:
        for location, raw in read_records(Path(task["file"])):
            add(location, raw)
    except OSError as e:
        add(task["file"], BadRow(f"{task['file']}: cannot read it ({e.strerror or e})"))
    return rows


def shape_row(source: str, raw: Any) -> dict[str, Any]:
    """One raw row → an Instruction row (the functional core, no Ray)."""
    shaped = SOURCES[source](raw)
    instruction = shaped["instruction"].strip()
    if not instruction:
        raise Skip("empty instruction")
    return {
        "id": instruction_id(source, instruction, shaped["input"]),
        "dataset": source,
        "instruction": instruction,
        "input": shaped["input"],
        "output": shaped["output"],
        "meta": shaped["meta"],
    }


def shape_batch(batch: pd.DataFrame) -> pd.DataFrame:
    out = []
    for source, order, location, raw, bad in batch[
        ["source", "order", "location", "raw", "bad"]
    ].itertuples(index=False):
        status, reason, record = "ok", "", ""
        if bad:
            status, reason = "bad", raw
        else:
            try:
                record = json.dumps(shape_row(source, json.loads(raw)), ensure_ascii=False)
                record.encode("utf-8")  # a lone surrogate ("\ud800" in the JSON) cannot be saved
            except Skip as skip:
                status, reason = "skip", skip.reason
            except BadRow as e:
                status, reason = "bad", f"{location}: {e}"
            except UnicodeEncodeError:
                status, reason = "bad", f"{location}: text with a lone surrogate (not Unicode)"
            except (RecursionError, TypeError, AttributeError, KeyError) as e:  # odd shapes
                status, reason = "bad", f"{location}: not a {source} row ({type(e).__name__})"
        out.append((source, order, location, status, reason, record))
    return pd.DataFrame(out, columns=["source", "order", "location", "status", "reason", "record"])
