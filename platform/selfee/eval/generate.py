"""The four answer sets an evaluation generates, on batch inference's model actors, in one
Ray Data pass and one journal (``selfee.eval.job`` says what each set is)."""

from __future__ import annotations

import json
from typing import Any

from selfee import journal
from selfee.engines.config import ModelConfig
from selfee.eval.config import EvalConfig
from selfee.eval.inputs import EvalQuestion, log
from selfee.infer.answers import JournaledAnswer, answer_row, model_fingerprint
from selfee.infer.config import InferConfig
from selfee.infer.generate import AnswerSink, generate_answers
from selfee.infer.job import check_config
from selfee.records import write_jsonl

RUNS = ("forced", "autonomous", "first", "samples")

GENERATIONS = "generations.journal.jsonl"  # the journal: ``EvalStage`` discards it on --overwrite


def _infer_config(cfg: EvalConfig) -> InferConfig:
    fields = {k: getattr(cfg, k) for k in ModelConfig.model_fields}
    return InferConfig(**fields, ray=cfg.ray, progress_interval_s=cfg.progress_interval_s,
                       seed=cfg.seed)  # fmt: skip


def run_settings(cfg: EvalConfig, run: str, sample: int = 0) -> dict[str, Any]:
    """The revision-control settings of each answer set (see the module docstring)."""
    budget = cfg.max_new_tokens * (cfg.revisions + 1)
    if run == "forced":
        return {"min_revisions": cfg.revisions, "max_revisions": cfg.revisions,
                "max_new_tokens": budget, "temperature": 0.0, "seed": cfg.seed}  # fmt: skip
    if run == "autonomous":
        return {"min_revisions": 0, "max_revisions": cfg.revisions, "max_new_tokens": budget,
                "temperature": 0.0, "seed": cfg.seed}  # fmt: skip
    if run == "first":
        return {"answer_only": True, "max_new_tokens": cfg.max_new_tokens, "temperature": 0.0,
                "seed": cfg.seed}  # fmt: skip
    return {"answer_only": True, "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.sample_temperature, "seed": cfg.seed + 7919 * (sample + 1)}  # fmt: skip


def generate_runs(
    cfg: EvalConfig, questions: list[EvalQuestion]
) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], dict[str, str]]:
    """Generate (or take from the journal) every answer set; write each as an answer file."""
    base = _infer_config(cfg)
    folder = cfg.folder
    check_config(base.model_copy(update={"questions": cfg.questions,
                                         "output": folder / "forced.jsonl"}))  # fmt: skip
    run_cfgs = {run: base.model_copy(update=run_settings(cfg, run)) for run in RUNS}
    prints = {run: model_fingerprint(c) for run, c in run_cfgs.items()}
    journal_path = folder / GENERATIONS
    saved = journal.read_journal(journal_path, JournaledAnswer)
    if saved.skipped:
        log(saved.describe(journal_path))
    work, wanted = [], []
    for index, q in enumerate(questions):
        copies = {"samples": cfg.samples}
        for run in RUNS:
            for sample in range(copies.get(run, 1)):
                item_id = json.dumps([run, q.question_id, sample])
                wanted.append((run, q, item_id))
                row = saved.rows.get(item_id)
                if row is None or row.get("fingerprint") != prints[run]:
                    work.append({"id": item_id, "index": index, "question_id": q.question_id,
                                 "text": q.text, "input": q.input, "settings": run_settings(cfg, run, sample),
                                 "fingerprint": prints[run]})  # fmt: skip
    model_id = cfg.answer_model_id()
    sink = AnswerSink(
        journal_path, "", model_id, {k: r for k, r in saved.rows.items() if "result" in r}
    )
    log(f"{len(wanted)} answers wanted ({', '.join(RUNS)}), {len(wanted) - len(work)} saved "
        f"before, {len(work)} to generate")  # fmt: skip
    if work:
        generate_answers(base, work, {None: sink}, stage="eval")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {run: {} for run in RUNS}
    for run, q, item_id in wanted:
        row = sink.done.get(item_id)
        if row is not None and row.get("fingerprint") == prints[run]:
            answer = answer_row(row, run_cfgs[run], model_id, prints[run])
            runs[run].setdefault(q.key, []).append(answer)
    for run, rows in runs.items():
        write_jsonl(folder / f"{run}.jsonl", [r for q in questions for r in rows.get(q.key, [])])
    return runs, sink.failed
