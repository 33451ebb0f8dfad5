"""``selfee eval``: score answers turn by turn on a checkable task; generate them first if
given a model.

Generation (with ``--model`` / ``--base-url``) runs four answer sets through batch
inference's model actors (``selfee.infer.job.generate_answers``, any engine), all in one
Ray Data pass and one journal:

- ``forced``: ``revisions`` revisions forced (turns 0..N), greedy;
- ``autonomous``: the model stops itself (at most ``revisions`` revisions), greedy;
- ``first``: the first answer alone, greedy, no feedback;
- ``samples``: ``samples`` independent answers at ``sample_temperature``, no feedback.

Scoring fans every distinct (text, gold) out on Ray Data; code runs in those Ray tasks
through ``selfee.eval.sandbox``. Each score is journaled under a hash of task, gold and
text, so a re-run (after a crash, or with more questions) scores only what is missing.

With ``adapters`` (LoRA adapters on the model's base) the same pass generates every
model's sets on one engine; each model is then scored and reported in its own folder, as
an evaluation of it alone (``EvalConfig.one_model_configs``).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from selfee.errors import ConfigError
from selfee.eval import report, turns
from selfee.eval.config import EvalConfig
from selfee.eval.generate import GENERATIONS, Generated, generate_runs
from selfee.eval.inputs import EvalQuestion, check_ids, load_questions, log, read_answer_file
from selfee.eval.score import SCORES, plan_scores, question_result, score_all
from selfee.eval.tasks import TASKS, Task
from selfee.stage import Stage


class EvalStage(Stage[EvalConfig]):
    name = "eval"
    summary_file = "eval.json"

    def folder(self) -> Path:
        return self.cfg.folder

    def manifest_path(self) -> Path:
        return self.folder() / "eval.manifest.json"

    def inputs(self) -> dict[str, Path]:
        cfg = self.cfg
        given = {"answers": cfg.answers} if cfg.answers else {}
        if cfg.autonomous_answers:
            given["autonomous_answers"] = cfg.autonomous_answers
        if not cfg.answers and not cfg.base_url:
            given["model"] = Path(str(cfg.model))
        return {"questions": Path(str(cfg.questions)), **given}

    def outputs(self) -> dict[str, Path]:
        plot = {"plot": self.cfg.plot} if self.cfg.plot is not None else {}
        return {"report": self.summary_path(), **plot}

    def counts(self, summary: dict[str, Any]) -> dict[str, Any]:
        auto = summary["autonomous"] or {}
        return {"n": summary["n"], "accuracy_per_turn": [t["accuracy"] for t in summary["turns"]],
                "autonomous_accuracy": auto.get("accuracy")}  # fmt: skip

    def run(self) -> dict[str, Any]:
        return _run(self)


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    """One model's report; with adapters, ``{"models": {name: report}}``."""
    return EvalStage(cfg).run()


def _run(stage: EvalStage) -> dict[str, Any]:
    from selfee.ray_runtime import ray_runtime

    cfg = stage.cfg
    cfg.require()
    stages = {adapter: stage if one is cfg else EvalStage(one, stage.label)
              for adapter, one in cfg.one_model_configs().items()}  # fmt: skip
    for each in stages.values():
        if each.cfg.overwrite:
            each.discard(GENERATIONS, SCORES)
    task = TASKS[cfg.task]
    started = time.monotonic()
    questions, bad_gold = load_questions(cfg, task)
    log(f"{task.name}: {len(questions)} questions from {cfg.questions}"
        + (f" ({len(bad_gold)} without a usable {task.name} gold, left out)" if bad_gold else ""))  # fmt: skip
    with ray_runtime(cfg.ray):
        generated = {} if cfg.answers is not None else generate_runs(cfg, questions)
        summaries = {}
        for adapter, each in stages.items():
            summary = evaluate(each.cfg, task, questions, bad_gold, generated.get(adapter))
            summary["seconds"] = round(time.monotonic() - started, 2)
            if each.cfg.plot is not None:
                report.plot(summary, each.cfg.plot)
            each.finish(summary)
            summaries[each.cfg.answer_model_id()] = summary
    return summaries.popitem()[1] if len(summaries) == 1 else {"models": summaries}


def evaluate(
    cfg: EvalConfig,
    task: Task,
    questions: list[EvalQuestion],
    bad_gold: list[str],
    generated: Generated | None,
) -> dict[str, Any]:
    """Score a model's answers turn by turn (``generated``, or ``cfg.answers``); returns
    the report."""
    cfg.folder.mkdir(parents=True, exist_ok=True)
    failed: dict[str, str] = {}
    if generated is None:
        assert cfg.answers is not None
        runs = {"forced": read_answer_file(cfg.answers)}
        check_ids(cfg.answers, runs["forced"], questions)
        if cfg.autonomous_answers is not None:
            runs["autonomous"] = read_answer_file(cfg.autonomous_answers)
            check_ids(cfg.autonomous_answers, runs["autonomous"], questions)
    else:
        runs, failed = generated
    items, plan = plan_scores(task, questions, runs)
    scores, scored_now = score_all(cfg, task, items)
    results = [question_result(q, plan[q.key], scores) for q in questions if q.key in plan]
    if not results:
        raise ConfigError("no question has an answer to score")
    summary = {
        "task": task.name,
        **turns.summarize(results, cfg.revisions, cfg.bootstrap, cfg.seed, task.vote_key),
        "questions": len(questions) + len(bad_gold),
        "without_gold": bad_gold,
        "without_answer": [str(q.question_id) for q in questions if q.key not in plan],
        "answers_without_question": sorted(
            {k for rows in runs.values() for k in rows} - {q.key for q in questions}
        ),
        "failed_generations": failed,
        "scored": {"texts": len(items), "now": scored_now},
        "source": str(cfg.answers) if cfg.answers else (cfg.base_url or str(cfg.model)),
    }
    if task.runs_code:
        summary["sandbox"] = dict(Counter(s.detail.split(":")[0] for s in scores.values()))
    return summary
