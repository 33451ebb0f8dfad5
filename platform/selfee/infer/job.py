"""Batch inference: questions → SelFee chains with revision control → an answer file.

Model actors on Ray Data (``concurrency`` copies, each with its CPUs/GPUs) take questions
in batches and run ``selfee.revision.generate_batch`` on a local model (on vLLM every
question of a batch is in flight at once, continuously batched), or on an
OpenAI-compatible endpoint (``base_url``). Every finished answer goes to a journal beside
the answer file at once; a re-run (after a crash, Ctrl-C, or with more questions) generates
only what the journal lacks for the same model and settings. The answer file comes out in
the SelFee/FastChat format, in question order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfee import journal
from selfee.engines import check_model
from selfee.errors import ConfigError
from selfee.infer.answers import (
    JournaledAnswer,
    answer_row,
    generation_settings,
    model_fingerprint,
    summarize,
)
from selfee.infer.config import InferConfig
from selfee.infer.generate import generate_answers
from selfee.records import read_questions, write_jsonl
from selfee.stage import Stage

__all__ = ["InferStage", "check_config", "generate_answers", "run_infer"]


def log(message: str) -> None:
    print(f"[infer] {message}", flush=True)


def check_config(cfg: InferConfig) -> None:
    cfg.require()
    if not cfg.base_url:
        try:
            check_model(cfg.model, cfg.engine, cfg.gpus_per_actor)
        except ValueError as e:
            raise ConfigError(f"--model: {e}; to use an endpoint, give --base-url too") from None
    if cfg.output.suffix != ".jsonl":
        raise ConfigError(f"--output must be a .jsonl file (got {cfg.output})")


class InferStage(Stage[InferConfig]):
    """Its files sit beside the answer file: ``A.journal.jsonl``, ``A.summary.json``,
    ``A.manifest.json`` (several answer files share a folder)."""

    name = "infer"

    def beside(self, suffix: str) -> Path:
        output = Path(str(self.cfg.output))
        return output.with_name(output.stem + suffix)

    def folder(self) -> Path:
        return Path(str(self.cfg.output)).parent

    def manifest_path(self) -> Path:
        return self.beside(".manifest.json")

    def summary_path(self) -> Path:
        return self.beside(".summary.json")

    def inputs(self) -> dict[str, Path]:
        model = {} if self.cfg.base_url else {"model": Path(str(self.cfg.model))}
        return {"questions": Path(str(self.cfg.questions)), **model}

    def outputs(self) -> dict[str, Path]:
        return {"answers": Path(str(self.cfg.output))}

    def counts(self, summary: dict[str, Any]) -> dict[str, Any]:
        keys = ("answers", "revisions", "forced_rewrites", "finish_reasons", "tokens")
        return {k: summary[k] for k in keys}

    def run(self) -> dict[str, Any]:
        return _run(self)


def run_infer(cfg: InferConfig) -> dict[str, Any]:
    return InferStage(cfg).run()


def _run(stage: InferStage) -> dict[str, Any]:
    cfg = stage.cfg
    check_config(cfg)
    assert cfg.questions is not None and cfg.output is not None
    questions = read_questions(cfg.questions)[: cfg.limit]
    model_id = cfg.answer_model_id()
    fingerprint = model_fingerprint(cfg)
    journal_path = stage.beside(".journal.jsonl")
    if cfg.overwrite:
        stage.discard(journal_path.name)
    # Answers of other settings stay in the journal (keyed by fingerprint): not refused.
    stage.settings = {"fingerprint": fingerprint, **generation_settings(cfg)}
    saved = journal.read_journal(journal_path, JournaledAnswer)
    if saved.skipped:
        log(saved.describe(journal_path))
    done = {key: row for key, row in saved.rows.items() if row["fingerprint"] == fingerprint}
    work = []
    for index, q in enumerate(questions):
        key = json.dumps(q["question_id"])
        if key not in done:
            work.append(
                {"id": key, "index": index, "question_id": q["question_id"], "text": q["text"]}
            )
    log(
        f"{len(questions)} questions, {len(questions) - len(work)} answered before, "
        f"{len(work)} to generate with {model_id} (min_revisions {cfg.min_revisions}, "
        f"max_revisions {cfg.max_revisions}, max_new_tokens {cfg.max_new_tokens})"
    )
    failed: dict[str, str] = {}
    if work:
        generate_answers(cfg, work, journal_path, fingerprint, done, failed)
    rows = [
        answer_row(done[key], cfg, model_id, fingerprint)
        for q in questions
        if (key := json.dumps(q["question_id"])) in done
    ]
    write_jsonl(cfg.output, rows)
    summary = summarize(rows, len(questions), failed, stage.elapsed(), cfg)
    summary["generated"] = len(work) - len(failed)
    summary["journal_skipped"] = {"unreadable": saved.unreadable, "invalid": saved.invalid}
    stage.finish(summary)
    log(
        f"answers: {cfg.output} ({len(rows)} of {len(questions)}); revisions "
        f"{summary['revisions']}; finish reasons {summary['finish_reasons']}"
    )
    if failed:
        first = next(iter(failed.items()))
        log(
            f"{len(failed)} questions failed (first: question {first[0]}: {first[1]}); "
            "re-run the same command to try them again"
        )
    return summary
