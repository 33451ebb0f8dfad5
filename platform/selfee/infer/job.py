"""Batch inference: questions → SelFee chains with revision control → an answer file.

Model actors on Ray Data (``concurrency`` copies, each with its CPUs/GPUs) take questions
in batches and run ``selfee.revision.generate_batch`` on a local model (on vLLM every
question of a batch is in flight at once, continuously batched), or on an
OpenAI-compatible endpoint (``base_url``). Every finished answer goes to a journal beside
the answer file at once; a re-run (after a crash, Ctrl-C, or with more questions) generates
only what the journal lacks for the same model and settings. The answer file comes out in
the SelFee/FastChat format, in question order.

With ``adapters`` (LoRA adapters on the model's base), one engine holds them all and each
question goes to every model in the same batches; each model gets the answer file,
journal and manifest a run of it alone would leave (``InferConfig.one_model_configs``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfee import journal
from selfee.engines import AdaptersRefused, check_model
from selfee.errors import ConfigError
from selfee.infer.answers import (
    JournaledAnswer,
    answer_row,
    generation_settings,
    model_fingerprint,
    summarize,
)
from selfee.infer.config import InferConfig
from selfee.infer.generate import AnswerSink, generate_answers
from selfee.records import read_questions, write_jsonl
from selfee.stage import Stage

__all__ = ["InferStage", "check_config", "generate_answers", "run_infer"]


def log(message: str) -> None:
    print(f"[infer] {message}", flush=True)


def check_config(cfg: InferConfig) -> None:
    cfg.require()
    if cfg.adapters and "{model}" not in str(cfg.output):
        raise ConfigError(f"--output: with --adapters each model writes its own answer file: "
                          f"put {{model}} in it, e.g. {cfg.output.parent / '{model}.jsonl'}")  # fmt: skip
    if not cfg.base_url:
        try:
            check_model(cfg.model, cfg.engine, cfg.gpus_per_actor, cfg.adapters)
        except AdaptersRefused as e:
            raise ConfigError(str(e)) from None
        except ValueError as e:
            raise ConfigError(f"--model: {e}; to use an endpoint, give --base-url too") from None
    if cfg.output.suffix != ".jsonl":
        raise ConfigError(f"--output must be a .jsonl file (got {cfg.output})")


class InferStage(Stage[InferConfig]):
    """Its files sit beside the answer file: ``A.journal.jsonl``, ``A.summary.json``,
    ``A.manifest.json`` (several answer files share a folder)."""

    name = "infer"

    def beside(self, suffix: str) -> Path:
        output = self.cfg.answer_file()
        return output.with_name(output.stem + suffix)

    def folder(self) -> Path:
        return self.cfg.answer_file().parent

    def manifest_path(self) -> Path:
        return self.beside(".manifest.json")

    def summary_path(self) -> Path:
        return self.beside(".summary.json")

    def inputs(self) -> dict[str, Path]:
        model = {} if self.cfg.base_url else {"model": Path(str(self.cfg.model))}
        return {"questions": Path(str(self.cfg.questions)), **model}

    def outputs(self) -> dict[str, Path]:
        return {"answers": self.cfg.answer_file()}

    def counts(self, summary: dict[str, Any]) -> dict[str, Any]:
        keys = ("answers", "revisions", "forced_rewrites", "finish_reasons", "tokens")
        return {k: summary[k] for k in keys}

    def run(self) -> dict[str, Any]:
        return _run(self)


def run_infer(cfg: InferConfig) -> dict[str, Any]:
    return InferStage(cfg).run()


@dataclass
class _ModelRun:
    """One model's part of a run: its own stage (files, manifest), journal and answers."""

    stage: InferStage
    sink: AnswerSink
    skipped: dict[str, int]


def _run(stage: InferStage) -> dict[str, Any]:
    cfg = stage.cfg
    check_config(cfg)
    assert cfg.questions is not None and cfg.output is not None
    questions = read_questions(cfg.questions)[: cfg.limit]
    runs = {
        adapter: _start(stage if adapter is None else InferStage(one, stage.label))
        for adapter, one in cfg.one_model_configs().items()
    }
    work = []  # question by question, each for every model: the batches mix them
    for index, q in enumerate(questions):
        key = json.dumps(q["question_id"])
        for adapter, run in runs.items():
            if key not in run.sink.done:
                work.append({"id": key, "index": index, "question_id": q["question_id"],
                             "text": q["text"], "input": q.get("input") or "",
                             "adapter": adapter})  # fmt: skip
    names = ", ".join(run.sink.model_id for run in runs.values())
    log(
        f"{len(questions)} questions, {len(questions) * len(runs) - len(work)} answered before, "
        f"{len(work)} to generate with {names} (min_revisions {cfg.min_revisions}, "
        f"max_revisions {cfg.max_revisions}, max_new_tokens {cfg.max_new_tokens})"
    )
    if work:
        generate_answers(cfg, work, {adapter: run.sink for adapter, run in runs.items()})
    summaries = {run.sink.model_id: _finish(run, questions) for run in runs.values()}
    if len(summaries) == 1:
        return next(iter(summaries.values()))
    failed = {f"{name}: {q}": e for name, s in summaries.items() for q, e in s["failed"].items()}
    return {"models": summaries, "failed": failed}


def _start(stage: InferStage) -> _ModelRun:
    """A model's answers so far (its journal's rows made with the same fingerprint)."""
    cfg = stage.cfg
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
    sink = AnswerSink(journal_path, fingerprint, cfg.answer_model_id(), done)
    return _ModelRun(stage, sink, {"unreadable": saved.unreadable, "invalid": saved.invalid})


def _finish(run: _ModelRun, questions: list[dict[str, Any]]) -> dict[str, Any]:
    """Write a model's answer file (question order), summary and manifest."""
    cfg, sink = run.stage.cfg, run.sink
    output = cfg.answer_file()
    rows = [
        answer_row(sink.done[key], cfg, sink.model_id, sink.fingerprint)
        for q in questions
        if (key := json.dumps(q["question_id"])) in sink.done
    ]
    write_jsonl(output, rows)
    summary = summarize(rows, len(questions), sink.failed, run.stage.elapsed(), cfg)
    summary["generated"] = sink.generated
    summary["journal_skipped"] = run.skipped
    run.stage.finish(summary)
    log(
        f"answers: {output} ({len(rows)} of {len(questions)}); revisions "
        f"{summary['revisions']}; finish reasons {summary['finish_reasons']}"
    )
    if sink.failed:
        first = next(iter(sink.failed.items()))
        log(
            f"{len(sink.failed)} questions failed for {sink.model_id} (first: question "
            f"{first[0]}: {first[1]}); re-run the same command to try them again"
        )
    return summary
