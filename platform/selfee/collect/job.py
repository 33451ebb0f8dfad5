"""The collection job: source files → Instruction rows, fanned out with Ray Data.

Ray Data reads the files and shapes rows in parallel (HTML cleanup and language identification
are the costly parts); the driver then applies what needs the whole picture, deterministically:
FLAN's per-task cap, per-source sampling and caps, global de-duplication.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from selfee.collect.config import CollectConfig
from selfee.collect.select import CollectError, finish
from selfee.collect.shape import read_file, shape_batch
from selfee.collect.sources import BadRow, data_files
from selfee.console import progress_bar
from selfee.ray_runtime import ray_runtime
from selfee.records import INSTRUCTION_FIELDS, write_jsonl
from selfee.stage import Stage

__all__ = ["CollectError", "CollectStage", "run_collect"]

BATCH_SIZE = 512


def log(message: str) -> None:
    print(f"[collect] {message}", flush=True)


class CollectStage(Stage[CollectConfig]):
    name = "collect"

    def inputs(self) -> dict[str, Path]:
        return {f"{i}:{spec.name}": spec.path for i, spec in enumerate(self.cfg.sources)}

    def outputs(self) -> dict[str, Path]:
        outputs = {"instructions": self.folder() / "instructions.parquet"}
        if self.cfg.jsonl:
            outputs["instructions_jsonl"] = self.folder() / "instructions.jsonl"
        return outputs

    def counts(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {"rows_in": summary["rows_in"], "rows_out": summary["rows_out"]}

    def run(self) -> dict[str, Any]:
        summary = collect_rows(self.cfg, self.outputs())
        self.finish(summary)
        print_summary(summary)
        return summary


def run_collect(cfg: CollectConfig) -> dict[str, Any]:
    return CollectStage(cfg).run()


def collect_rows(cfg: CollectConfig, outputs: dict[str, Path]) -> dict[str, Any]:
    """Read, shape and select; write the instruction files (``outputs``); return the summary."""
    cfg.require()
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
    write_outputs(instructions, summary, outputs)
    summary["seconds"] = round(time.monotonic() - t0, 1)
    return summary


def write_outputs(
    rows: list[dict[str, Any]], summary: dict[str, Any], outputs: dict[str, Path]
) -> None:
    path = outputs["instructions"]
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(
        [{**{k: r[k] for k in INSTRUCTION_FIELDS if k != "meta"}, "meta": json.dumps(r["meta"])}
         for r in rows],
        schema=pa.schema([(k, pa.string()) for k in INSTRUCTION_FIELDS]),
    )  # fmt: skip
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    artifacts = {"instructions": str(path), "summary": str(path.parent / "summary.json")}
    if "instructions_jsonl" in outputs:
        write_jsonl(outputs["instructions_jsonl"], rows)
        artifacts["instructions_jsonl"] = str(outputs["instructions_jsonl"])
    summary["artifacts"] = artifacts


def print_summary(summary: dict[str, Any]) -> None:
    log(f"{'source':14s} {'rows in':>8s} {'rows out':>9s}  dropped")
    for name, s in summary["sources"].items():
        dropped = ", ".join(f"{k}: {v}" for k, v in sorted(s["dropped"].items())) or "-"
        log(f"{name:14s} {s['rows_in']:8d} {s['rows_out']:9d}  {dropped}")
    log(f"{'total':14s} {summary['rows_in']:8d} {summary['rows_out']:9d}")
    for name, path in summary["artifacts"].items():
        log(f"{name:18s} {path}")
