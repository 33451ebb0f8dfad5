"""The augmentation job: Instruction rows → Chain rows, fanned out with Ray Data.

A fixed pool of Ray Data actors runs ``augment_record`` for many rows at once (asyncio inside
each actor); each actor keeps 1/N of the job's rate limits (``selfee.ratelimit`` explains
why). The driver is the only writer: it appends every finished row to the journal, prints
progress, and at the end rebuilds ``chains.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from selfee import journal, lineage
from selfee.augment import resume
from selfee.augment.config import AugmentConfig
from selfee.augment.loop import LoopSettings, augment_record
from selfee.config import dump_config
from selfee.errors import ConfigError
from selfee.llm import TeacherCall
from selfee.llm_job import LLMWorker, ResolvedEndpoint, fan_out, preflight, resolve_endpoint
from selfee.progress import Progress, format_duration
from selfee.records import ChainRow, instruction_id, read_rows


def log(message: str) -> None:
    print(f"[augment] {message}", flush=True)


class AugmentWorker(LLMWorker):
    """A Ray Data actor that turns Instruction rows into Chain rows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cfg: AugmentConfig = self.cfg  # type: ignore[assignment]
        self.base = LoopSettings(
            max_iterations=cfg.max_iterations,
            prompt_budget=cfg.max_context - cfg.max_tokens,
            prompts=cfg.prompts,
        )

    async def process(self, call: TeacherCall, record: dict[str, Any]) -> dict[str, Any]:
        cfg: AugmentConfig = self.cfg  # type: ignore[assignment]
        settings = dataclasses.replace(
            self.base,
            use_gold=record["dataset"] in cfg.gold_datasets,
            reuse_answer=record["dataset"] in cfg.reuse_answer_datasets,
        )
        return await augment_record(call.chat, record, settings)


# --- the job ---------------------------------------------------------------------------


def read_instructions(path: Path, limit: int | None) -> list[dict[str, str]]:
    """Instruction rows with an id each (computed when missing), each id once."""
    try:
        rows = read_rows(path)
    except FileNotFoundError:
        raise ConfigError(f"input file {path} does not exist") from None
    seen: set[str] = set()
    records = []
    repeats = 0
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get("instruction"), str):
            raise ConfigError(f"{path}: row {n} has no 'instruction' text")
        dataset, input_ = str(row.get("dataset") or ""), str(row.get("input") or "")
        key = str(row.get("id") or instruction_id(dataset, row["instruction"], input_))
        if key in seen:
            repeats += 1
            continue
        seen.add(key)
        records.append({
            "id": key,
            "dataset": dataset,
            "instruction": row["instruction"],
            "input": input_,
            "output": str(row.get("output") or ""),
        })  # fmt: skip
        if limit is not None and len(records) >= limit:
            break
    if repeats:
        log(f"{repeats} input rows repeat an earlier id: each id is run once")
    return records


def run_settings(cfg: AugmentConfig, model: str) -> dict[str, Any]:
    """What makes two runs' chains comparable; a resumed run must match it."""
    return {
        "model": model,
        "max_iterations": cfg.max_iterations,
        "max_tokens": cfg.max_tokens,
        "max_context": cfg.max_context,
        "temperature": cfg.temperature,
        "gold_datasets": sorted(cfg.gold_datasets),
        "reuse_answer_datasets": sorted(cfg.reuse_answer_datasets),
        "prompts": dump_config(cfg.prompts),
    }


def run_augment(cfg: AugmentConfig) -> dict[str, Any]:
    if cfg.input is None:
        raise ConfigError("give the instructions to augment: --input FILE (.parquet or .jsonl)")
    inputs = read_instructions(cfg.input, cfg.limit)
    if not inputs:
        raise ConfigError(f"{cfg.input} holds no instructions")
    out = Path(cfg.output)
    from selfee.ray_runtime import ray_runtime

    with resolve_endpoint(cfg, log) as ep:
        resume.check_settings(out, run_settings(cfg, ep.model), cfg.overwrite, cfg.renamed)
        saved = journal.read_journal(out / resume.JOURNAL, ChainRow)
        if saved.skipped:
            log(saved.describe(out / resume.JOURNAL))
        done = saved.rows
        todo = resume.pending(inputs, done, cfg.retry_errors)
        previous = sum(1 for row in inputs if row["id"] in done)
        if previous:
            errors = sum(1 for row in inputs if row["id"] in done and done[row["id"]]["error"])
            log(
                f"resuming: {previous} of {len(inputs)} rows already done ({errors} with "
                f"errors{', re-running them' if cfg.retry_errors else ''})"
            )
        started = time.monotonic()
        progress = Progress(total=len(todo), prices=cfg.prices, stage="augment")
        fatal = None
        if todo:
            for warning in asyncio.run(preflight(ep)):
                log(f"warning: {warning}")
            with ray_runtime(cfg.ray):
                fatal = _fan_out(cfg, ep, todo, out, done, progress)
        rows = resume.finalize(out, inputs, done)
    summary = summarize(rows, cfg)
    summary["run"] = {
        "rows_run": progress.done,
        "seconds": round(time.monotonic() - started, 1),
        "requests": progress.requests,
        "requests_per_minute": round(progress.requests / max(progress.elapsed_s, 1e-9) * 60, 1),
        "endpoint": ep.base_url,
        "model": ep.model,
        "offline_teacher": ep.offline,
    }
    summary["run"]["journal_skipped"] = {"unreadable": saved.unreadable, "invalid": saved.invalid}
    summary["config"] = dump_config(cfg)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lineage.write_manifest(
        out / lineage.MANIFEST, "augment", {"instructions": Path(str(cfg.input))},
        summary["config"], {"chains": out / "chains.jsonl"},
        {"rows": summary.get("rows"), "errors": summary.get("errors")}, summary["run"]["seconds"],
    )  # fmt: skip
    print_summary(summary, out)
    if fatal:
        raise ConfigError(f"the endpoint refused the job: {fatal}; fix it and re-run to continue")
    return summary


def _fan_out(
    cfg: AugmentConfig,
    ep: ResolvedEndpoint,
    todo: list[dict[str, str]],
    out: Path,
    done: dict[str, dict[str, Any]],
    progress: Progress,
) -> str | None:
    """Run ``todo``; every finished row goes to the journal and ``done``."""
    log(f"writing to {out}")
    with journal.Journal(out / resume.JOURNAL) as jrnl:

        def on_row(row: dict[str, Any]) -> None:
            jrnl.write(row)
            done[row["id"]] = row

        return fan_out(cfg, ep, todo, AugmentWorker, on_row, progress, log)


# --- summary ---------------------------------------------------------------------------


def error_kind(error: str) -> str:
    return error.split(":", 1)[0].strip() or "error"


def summarize(rows: list[dict[str, Any]], cfg: AugmentConfig) -> dict[str, Any]:
    usage = collections.Counter()
    for row in rows:
        usage.update(row.get("usage") or {})
    errors = collections.Counter(error_kind(r["error"]) for r in rows if r.get("error"))
    return {
        "rows": len(rows),
        "complete": sum(1 for r in rows if not r.get("error")),
        "errors": sum(errors.values()),
        "errors_by_kind": dict(errors.most_common()),
        "iterations": dict(sorted(collections.Counter(r["iteration"] for r in rows).items())),
        "stop_reasons": dict(collections.Counter(r.get("stop_reason") for r in rows)),
        "context_truncated": sum(1 for r in rows if r.get("iteration_truncated")),
        "usage": dict(usage),
        "cost_usd": round(cfg.prices.cost(usage["prompt_tokens"], usage["completion_tokens"]), 4),
    }


def print_summary(summary: dict[str, Any], out: Path) -> None:
    run = summary["run"]
    log(
        f"done: {summary['rows']} chains ({summary['complete']} complete, "
        f"{summary['errors']} with errors) in {out / resume.CHAINS}"
    )
    log(
        f"this run: {run['rows_run']} rows, {run['requests']} requests "
        f"({run['requests_per_minute']}/min) in {format_duration(run['seconds'])}"
    )
    log(f"outputs per chain (answer + revisions): {summary['iterations']}")
    log(f"why chains stopped: {summary['stop_reasons']}")
    if summary["errors"]:
        log(f"errors: {summary['errors_by_kind']} (re-run with --retry-errors to retry them)")
    if summary["context_truncated"]:
        log(f"chains whose prompts were cut to fit the context: {summary['context_truncated']}")
    usage = summary["usage"]
    cost = f", ~${summary['cost_usd']}" if summary["cost_usd"] else ""
    log(
        f"tokens: {usage.get('prompt_tokens', 0):,} prompt + "
        f"{usage.get('completion_tokens', 0):,} completion{cost}"
    )
    if run["offline_teacher"]:
        log("*** these chains come from the OFFLINE TEACHER: synthetic text, not real data")
    log(f"summary: {out / 'summary.json'}")
