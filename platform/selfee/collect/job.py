"""The collection job: source files → Instruction rows, fanned out with Ray Data.

Ray Data reads the files and shapes rows in parallel (HTML cleanup and language identification
are the costly parts); the driver then applies what needs the whole picture, deterministically:
FLAN's per-task cap, per-source sampling and caps, global de-duplication.
"""

from __future__ import annotations

import collections
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from selfee import lineage
from selfee.collect import filters
from selfee.collect.config import CollectConfig
from selfee.collect.sources import SOURCES, BadRow, Skip, data_files, read_records
from selfee.config import dump_config
from selfee.console import progress_bar
from selfee.ray_runtime import ray_runtime
from selfee.records import INSTRUCTION_FIELDS, instruction_id, stable_fraction, write_jsonl

BATCH_SIZE = 512


def log(message: str) -> None:
    print(f"[collect] {message}", flush=True)


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


def chosen_positions(
    rows: list[dict[str, Any]], positions: list[int], keep: int, seed: int, salt: str
) -> list[int]:
    """``keep`` of ``positions``, chosen by a seeded hash of each row's id (so the same rows
    for the same seed, whatever the input order); rows with equal ids count one by one."""
    ranked = sorted(positions, key=lambda i: (stable_fraction(seed, salt, rows[i]["id"]), i))
    return ranked[:keep]


def select(rows: list[dict[str, Any]], keep: int, seed: int, salt: str) -> list[dict[str, Any]]:
    """A deterministic sample of ``keep`` rows, in their original order."""
    chosen = set(chosen_positions(rows, list(range(len(rows))), keep, seed, salt))
    return [row for i, row in enumerate(rows) if i in chosen]


class CollectError(ValueError):
    pass


def run_collect(cfg: CollectConfig) -> dict[str, Any]:
    if not cfg.sources:
        raise CollectError("no sources: give --source NAME=PATH (or 'sources' in the config)")
    tasks = []
    for order, spec in enumerate(cfg.sources):
        try:
            files = data_files(spec.path)
        except BadRow as e:
            raise CollectError(f"source {spec.name}: {e}") from None
        tasks += [{"source": spec.name, "order": order, "file": str(f.resolve())} for f in files]

    t0 = time.monotonic()
    with ray_runtime(cfg.ray):
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # first of duplicates = first in config
        # Reading is quick and tells how many rows there are to shape (the costly part:
        # HTML cleanup, language identification) for the progress bar.
        read = (
            ray.data.from_items(tasks)
            .flat_map(read_file)
            # One big file reads into one block: split it so shaping runs on every CPU.
            .repartition(target_num_rows_per_block=BATCH_SIZE * 4)
            .materialize()
        )
        shaped = read.map_batches(shape_batch, batch_size=BATCH_SIZE, batch_format="pandas")
        results: list[dict[str, Any]] = []
        with progress_bar("collect", "shaping", read.count(), "row") as bar:
            for batch in shaped.iter_batches(batch_size=None, batch_format="pandas"):
                results += batch.to_dict("records")
                bar.update(len(batch))
    log(f"read and shaped {len(results)} rows from {len(tasks)} files "
        f"({time.monotonic() - t0:.1f} s)")  # fmt: skip
    instructions, summary = finish(results, cfg)
    write_outputs(instructions, summary, cfg)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    (cfg.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lineage.write_manifest(
        cfg.output / lineage.MANIFEST, "collect",
        {f"{i}:{spec.name}": spec.path for i, spec in enumerate(cfg.sources)}, summary["config"],
        {k: Path(v) for k, v in summary["artifacts"].items() if k != "summary"},
        {"rows_in": summary["rows_in"], "rows_out": summary["rows_out"]}, summary["seconds"],
    )  # fmt: skip
    print_summary(summary)
    return summary


def finish(
    results: list[dict[str, Any]], cfg: CollectConfig
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Counts, bad-row policy, caps, sampling and de-duplication over all shaped rows."""
    per_source: dict[str, dict[str, Any]] = {
        spec.name: {"rows_in": 0, "rows_out": 0, "dropped": collections.Counter()}
        for spec in cfg.sources
    }
    bad_rows: list[str] = []
    by_order: dict[int, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in results:
        stats = per_source[row["source"]]
        stats["rows_in"] += 1
        if row["status"] == "bad":
            if not cfg.skip_bad_rows:
                raise CollectError(
                    f"malformed input: {row['reason']} (set skip_bad_rows to count and skip such rows)"
                )
            bad_rows.append(row["reason"])
            stats["dropped"]["malformed"] += 1
        elif row["status"] == "skip":
            stats["dropped"][row["reason"]] += 1
        else:
            by_order[row["order"]].append(json.loads(row["record"]))

    kept: list[dict[str, Any]] = []
    seen: set[str] = set()
    for order, spec in enumerate(cfg.sources):
        rows = by_order.get(order, [])
        stats = per_source[spec.name]
        if spec.name == "flan":
            rows = _cap_per_task(rows, cfg.flan_per_task, cfg.seed, stats["dropped"])
        if spec.fraction < 1:
            n = len(rows)
            rows = select(rows, round(n * spec.fraction), cfg.seed, f"fraction:{order}")
            _count(stats["dropped"], "sampled out", n - len(rows))
        if spec.cap is not None and len(rows) > spec.cap:
            stats["dropped"]["over cap"] += len(rows) - spec.cap
            rows = select(rows, spec.cap, cfg.seed, f"cap:{order}")
        for row in rows:
            key = filters.normalize_for_dedup(row["instruction"] + "\n" + row["input"])
            if cfg.dedup and key in seen:
                stats["dropped"]["duplicate"] += 1
                continue
            seen.add(key)
            kept.append(row)
            stats["rows_out"] += 1

    summary = {
        "rows_in": sum(s["rows_in"] for s in per_source.values()),
        "rows_out": len(kept),
        "sources": {name: {**s, "dropped": dict(s["dropped"])} for name, s in per_source.items()},
        "malformed_rows": bad_rows[:100],
        "config": dump_config(cfg),
    }
    return kept, summary


def _cap_per_task(
    rows: list[dict[str, Any]], per_task: int, seed: int, dropped: collections.Counter
) -> list[dict[str, Any]]:
    tasks: dict[str, list[int]] = collections.defaultdict(list)
    for i, row in enumerate(rows):
        tasks[row["meta"]["task"]].append(i)
    keep: set[int] = set()
    for task, positions in tasks.items():
        keep.update(chosen_positions(rows, positions, per_task, seed, f"flan:{task}"))
    _count(dropped, "per-task cap", len(rows) - len(keep))
    return [row for i, row in enumerate(rows) if i in keep]


def _count(dropped: collections.Counter, reason: str, n: int) -> None:
    if n:
        dropped[reason] += n


def write_outputs(rows: list[dict[str, Any]], summary: dict[str, Any], cfg: CollectConfig) -> None:
    cfg.output.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(
        [{**{k: r[k] for k in INSTRUCTION_FIELDS if k != "meta"}, "meta": json.dumps(r["meta"])}
         for r in rows],
        schema=pa.schema([(k, pa.string()) for k in INSTRUCTION_FIELDS]),
    )  # fmt: skip
    path = cfg.output / "instructions.parquet"
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    artifacts = {"instructions": str(path), "summary": str(cfg.output / "summary.json")}
    if cfg.jsonl:
        write_jsonl(cfg.output / "instructions.jsonl", rows)
        artifacts["instructions_jsonl"] = str(cfg.output / "instructions.jsonl")
    summary["artifacts"] = artifacts


def print_summary(summary: dict[str, Any]) -> None:
    log(f"{'source':14s} {'rows in':>8s} {'rows out':>9s}  dropped")
    for name, s in summary["sources"].items():
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(s["dropped"].items())) or "-"
        log(f"{name:14s} {s['rows_in']:8d} {s['rows_out']:9d}  {dropped}")
    log(f"{'total':14s} {summary['rows_in']:8d} {summary['rows_out']:9d}")
    for name, path in summary["artifacts"].items():
        log(f"{name:18s} {path}")
