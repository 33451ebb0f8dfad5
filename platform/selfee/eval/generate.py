"""The four answer sets an evaluation generates, on batch inference's model actors, in one
Ray Data pass, each model's in its own journal (``selfee.eval.job`` says what each set is)."""

from __future__ import annotations

import json
from dataclasses import dataclass
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


Generated = tuple[dict[str, dict[str, list[dict[str, Any]]]], dict[str, str]]  # runs, failed


def generate_runs(cfg: EvalConfig, questions: list[EvalQuestion]) -> dict[str | None, Generated]:
    """Generate (or take from each model's journal) every answer set of the model and of
    each adapter beside it (``cfg.one_model_configs()``), in one pass on one engine; write
    each as an answer file in the model's folder."""
    models = cfg.one_model_configs()
    base = _infer_config(cfg)
    check_config(base.model_copy(update={"questions": cfg.questions,
                                         "output": cfg.folder / "{model}.jsonl"}))  # fmt: skip
    plans = {adapter: _plan(one, questions, adapter) for adapter, one in models.items()}
    # question by question, each for every model: the batches mix them
    work = sorted((item for plan in plans.values() for item in plan.work), key=lambda w: w["index"])
    wanted = sum(len(plan.wanted) for plan in plans.values())
    log(f"{wanted} answers wanted ({', '.join(RUNS)}"
        + (f"; {len(models)} models" if len(models) > 1 else "")
        + f"), {wanted - len(work)} saved before, {len(work)} to generate")  # fmt: skip
    if work:
        generate_answers(base, work, {a: plan.sink for a, plan in plans.items()}, stage="eval")
    return {adapter: plan.written(questions) for adapter, plan in plans.items()}


@dataclass
class _Plan:
    """One model's answer sets: what is wanted, what is still to generate, where it goes."""

    cfg: EvalConfig
    run_cfgs: dict[str, InferConfig]
    prints: dict[str, str]
    sink: AnswerSink
    wanted: list[tuple[str, EvalQuestion, str]]
    work: list[dict[str, Any]]

    def written(self, questions: list[EvalQuestion]) -> Generated:
        """The answer sets from the journal's rows, each written as an answer file."""
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {run: {} for run in RUNS}
        for run, q, item_id in self.wanted:
            row = self.sink.done.get(item_id)
            if row is not None and row.get("fingerprint") == self.prints[run]:
                answer = answer_row(row, self.run_cfgs[run], self.sink.model_id, self.prints[run])
                runs[run].setdefault(q.key, []).append(answer)
        for run, rows in runs.items():
            answers = [r for q in questions for r in rows.get(q.key, [])]
            write_jsonl(self.cfg.folder / f"{run}.jsonl", answers)
        return runs, self.sink.failed


def _plan(cfg: EvalConfig, questions: list[EvalQuestion], adapter: str | None) -> _Plan:
    base = _infer_config(cfg)
    run_cfgs = {run: base.model_copy(update=run_settings(cfg, run)) for run in RUNS}
    prints = {run: model_fingerprint(c) for run, c in run_cfgs.items()}
    cfg.folder.mkdir(parents=True, exist_ok=True)
    journal_path = cfg.folder / GENERATIONS
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
                                 "text": q.text, "input": q.input, "adapter": adapter,
                                 "settings": run_settings(cfg, run, sample),
                                 "fingerprint": prints[run]})  # fmt: skip
    done = {k: r for k, r in saved.rows.items() if "result" in r}
    sink = AnswerSink(journal_path, "", cfg.answer_model_id(), done)
    return _Plan(cfg, run_cfgs, prints, sink, wanted, work)
