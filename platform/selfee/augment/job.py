"""The augmentation job: Instruction rows → Chain rows, fanned out with Ray Data.

A fixed pool of Ray Data actors runs ``augment_record`` for many rows at once (asyncio inside
each actor); each actor keeps 1/N of the job's rate limits (``selfee.ratelimit`` explains
why). The driver is the only writer: it appends every finished row to the journal, prints
progress, and at the end rebuilds ``chains.jsonl`` and ``summary.json``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from selfee import journal
from selfee.augment import resume
from selfee.augment.config import AugmentConfig
from selfee.augment.loop import LoopSettings, augment_record
from selfee.augment.summary import print_summary, summarize
from selfee.config import dump_config
from selfee.errors import ConfigError
from selfee.llm import TeacherCall
from selfee.llm_job import LLMWorker, ResolvedEndpoint, fan_out, preflight, resolve_endpoint
from selfee.progress import Progress
from selfee.records import ChainRow, instruction_id, read_rows
from selfee.stage import Stage


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


class AugmentStage(Stage[AugmentConfig]):
    name = "augment"

    def inputs(self) -> dict[str, Path]:
        return {"instructions": Path(str(self.cfg.input))}

    def outputs(self) -> dict[str, Path]:
        return {"chains": self.folder() / resume.CHAINS}

    def counts(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {k: summary[k] for k in ("rows", "errors", "iterations")}

    def run(self) -> dict[str, Any]:
        from selfee.ray_runtime import ray_runtime

        cfg = self.cfg
        cfg.require()
        inputs = read_instructions(cfg.input, cfg.limit)
        if not inputs:
            raise ConfigError(f"{cfg.input} holds no instructions")
        out = self.folder()
        with resolve_endpoint(cfg, log) as ep:
            settings = run_settings(cfg, ep.model)
            resume.check_settings(out, settings, cfg.overwrite, cfg.renamed, self.label)
            self.settings = settings
            saved = journal.read_journal(out / resume.JOURNAL, ChainRow)
            if saved.skipped:
                log(saved.describe(out / resume.JOURNAL))
            done = saved.rows
            todo = resume.pending(inputs, done, cfg.retry_errors)
            if previous := sum(1 for row in inputs if row["id"] in done):
                errors = sum(1 for row in inputs if row["id"] in done and done[row["id"]]["error"])
                log(f"resuming: {previous} of {len(inputs)} rows already done ({errors} with "
                    f"errors{', re-running them' if cfg.retry_errors else ''})")  # fmt: skip
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
            "seconds": round(self.elapsed(), 1),
            "requests": progress.requests,
            "requests_per_minute": round(progress.requests / max(progress.elapsed_s, 1e-9) * 60, 1),
            "endpoint": ep.base_url,
            "model": ep.model,
            "offline_teacher": ep.offline,
            "journal_skipped": {"unreadable": saved.unreadable, "invalid": saved.invalid},
        }
        summary["seconds"] = summary["run"]["seconds"]
        self.finish(summary)
        print_summary(summary, out)
        if fatal:
            raise ConfigError(
                f"the endpoint refused the job: {fatal}; fix it and re-run to continue"
            )
        return summary


def run_augment(cfg: AugmentConfig) -> dict[str, Any]:
    return AugmentStage(cfg).run()


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
