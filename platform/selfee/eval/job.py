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
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from selfee import journal, lineage
from selfee.config import dump_config
from selfee.console import detail, progress_bar
from selfee.engines.config import ModelConfig
from selfee.errors import ConfigError
from selfee.eval import report, turns
from selfee.eval.config import EvalConfig
from selfee.eval.sandbox import CodeTests, SandboxLimits, run_program
from selfee.eval.tasks import TASKS, Task, gold_of_row, question_of_row
from selfee.infer.config import InferConfig
from selfee.infer.job import (
    JournaledAnswer,
    answer_row,
    check_config,
    generate_answers,
    model_fingerprint,
)
from selfee.progress import format_duration, format_eta
from selfee.records import read_object_rows, write_jsonl

RUNS = ("forced", "autonomous", "first", "samples")


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries the report (``--json``: one object)."""
    print(f"[eval] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class EvalQuestion:
    question_id: Any
    text: str
    gold: Any

    @property
    def key(self) -> str:
        return json.dumps(self.question_id)


class ScoreRow(BaseModel):
    """A journaled score, checked before it is trusted."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str
    correct: bool
    answer: str | None
    detail: str


# --- questions and answers ---------------------------------------------------------------


def load_questions(cfg: EvalConfig, task: Task) -> tuple[list[EvalQuestion], list[str]]:
    """The questions with a gold this task can score, and the ids of those without one."""
    assert cfg.questions is not None
    rows = read_object_rows(cfg.questions, "questions")
    questions, bad_gold, seen = [], [], set()
    for n, row in rows:
        found = question_of_row(row)
        if found is None:
            raise ConfigError(
                f"{cfg.questions}:{n}: a question needs 'question_id' and 'text' (question.jsonl) "
                "or 'id' and 'instruction' (Instruction rows)"
            )
        qid, text = found
        if json.dumps(qid) in seen:
            raise ConfigError(f"{cfg.questions}:{n}: question {qid!r} appears twice")
        seen.add(json.dumps(qid))
        gold = gold_of_row(task, row)
        if gold is None:
            bad_gold.append(str(qid))
            continue
        questions.append(EvalQuestion(qid, text, gold))
    if not questions:
        raise ConfigError(
            f"{cfg.questions}: none of its {len(rows)} questions has a {task.name} gold "
            f"({task.gold_format}); is --task right?"
        )
    return questions[: cfg.limit], bad_gold


def read_answer_file(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Answer rows by question key, in file order (several rows: several samples)."""
    by_question: dict[str, list[dict[str, Any]]] = {}
    for n, row in read_object_rows(path, "answer"):
        qid = row.get("question_id")
        if not isinstance(qid, str | int | float) or not isinstance(row.get("text"), str):
            raise ConfigError(f"{path}:{n}: an answer needs 'question_id' and a string 'text'")
        by_question.setdefault(json.dumps(qid), []).append(row)
    return by_question


def _check_ids(path: Path, answers: dict[str, list], questions: list[EvalQuestion]) -> None:
    keys = {q.key for q in questions}
    if answers and not keys & set(answers):
        raise ConfigError(
            f"{path}: its question ids match none of the questions (answers have e.g. "
            f"{next(iter(answers))}, questions {questions[0].key}): are they for this file?"
        )


# --- generation -----------------------------------------------------------------------


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
    journal_path = folder / "generations.journal.jsonl"
    if cfg.overwrite:
        journal_path.unlink(missing_ok=True)
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
                                 "text": q.text, "settings": run_settings(cfg, run, sample),
                                 "fingerprint": prints[run]})  # fmt: skip
    done = {k: r for k, r in saved.rows.items() if "result" in r}
    failed: dict[str, str] = {}
    log(f"{len(wanted)} answers wanted ({', '.join(RUNS)}), {len(wanted) - len(work)} saved "
        f"before, {len(work)} to generate")  # fmt: skip
    if work:
        generate_answers(base, work, journal_path, "", done, failed, stage="eval")
    model_id = cfg.model_id or Path(str(cfg.model)).name.removesuffix(".gguf")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {run: {} for run in RUNS}
    for run, q, item_id in wanted:
        row = done.get(item_id)
        if row is not None and row.get("fingerprint") == prints[run]:
            answer = answer_row(row, run_cfgs[run], model_id, prints[run])
            runs[run].setdefault(q.key, []).append(answer)
    for run, rows in runs.items():
        write_jsonl(folder / f"{run}.jsonl", [r for q in questions for r in rows.get(q.key, [])])
    return runs, failed


# --- scoring --------------------------------------------------------------------------


def score_key(task: str, gold: Any, text: str) -> str:
    blob = json.dumps([task, gold, text], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def score_text(task: Task, gold: Any, text: str, limits: SandboxLimits) -> dict[str, Any]:
    """Read the answer out of ``text`` and compare it with ``gold`` (code: run its tests)."""
    answer = task.read_answer(text)
    if answer is None:
        return {"correct": False, "answer": None, "detail": "no answer found"}
    if task.runs_code:
        tests = CodeTests.from_gold(gold)
        assert tests is not None
        ran = run_program(answer, tests, limits)
        detail = f"{ran.reason}: {ran.tests_passed}/{ran.tests} tests"
        return {"correct": ran.passed, "answer": answer,
                "detail": detail + (f"; {ran.detail}" if ran.detail else "")}  # fmt: skip
    return {"correct": bool(task.same(answer, gold)), "answer": answer, "detail": ""}


def _score_batch(batch: dict[str, Any], task: str, limits: dict[str, Any]) -> dict[str, Any]:
    """A Ray Data task: score a batch of texts (code runs in the sandbox from here)."""
    sandbox = SandboxLimits(**limits)
    rows = []
    for blob in batch["item"]:
        item = json.loads(blob)
        rows.append(json.dumps({"id": item["id"], **score_text(TASKS[task], item["gold"],
                                                               item["text"], sandbox)}))  # fmt: skip
    return {"row": rows}


def score_all(
    cfg: EvalConfig, task: Task, items: dict[str, tuple[Any, str]]
) -> tuple[dict[str, turns.Score], int]:
    """Scores of ``items`` (key → (gold, text)): from the journal, the rest on Ray Data;
    and how many were scored now."""
    import ray

    journal_path = cfg.folder / "scores.journal.jsonl"
    if cfg.overwrite:
        journal_path.unlink(missing_ok=True)
    saved = journal.read_journal(journal_path, ScoreRow)
    if saved.skipped:
        log(saved.describe(journal_path))
    work = [
        {"item": json.dumps({"id": key, "gold": gold, "text": text})}
        for key, (gold, text) in items.items()
        if key not in saved.rows
    ]
    log(f"{len(items)} distinct texts to score, {len(items) - len(work)} scored before, "
        f"{len(work)} to score" + (" (programs run in the sandbox)" if task.runs_code else ""))  # fmt: skip
    if work:
        from ray.data import DataContext

        batch = 4 if task.runs_code else 256
        with journal.Journal(journal_path) as out:
            DataContext.get_current().enable_progress_bars = False
            dataset = ray.data.from_items(work, override_num_blocks=math.ceil(len(work) / batch))
            dataset = dataset.map_batches(
                _score_batch, batch_size=batch, num_cpus=1,
                fn_kwargs={"task": task.name, "limits": cfg.sandbox.model_dump()},
            )  # fmt: skip
            started = last = time.monotonic()
            finished = 0
            with progress_bar("eval", "scoring", len(work), "text") as bar:
                for rows in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                    for blob in rows["row"]:
                        row = json.loads(blob)
                        out.write(row)
                        saved.rows[row["id"]] = row
                        finished += 1
                    bar.update(len(rows["row"]))
                    if time.monotonic() - last >= cfg.progress_interval_s:
                        detail(f"[eval] {_progress(finished, len(work), time.monotonic() - started)}",
                               err=True)  # fmt: skip
                        last = time.monotonic()
            detail(f"[eval] {_progress(finished, len(work), time.monotonic() - started)}", err=True)
    scores = {
        key: turns.Score(row["correct"], row["answer"], row["detail"])
        for key, row in saved.rows.items()
        if key in items
    }
    return scores, len(work)


def _progress(done: int, total: int, seconds: float) -> str:
    return (f"scored {done}/{total} ({done / max(seconds, 1e-9):.1f}/s) · elapsed "
            f"{format_duration(seconds)} · ETA {format_eta(seconds, done, total)}")  # fmt: skip


# --- putting it together ------------------------------------------------------------------


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    meta = row.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _tokens(row: dict[str, Any]) -> int | None:
    tokens = _metadata(row).get("tokens")
    return tokens if isinstance(tokens, int) else None


def _generation(row: dict[str, Any]) -> str:
    whole = row.get("whole_generation")
    return whole if isinstance(whole, str) and whole else row["text"]


def run_eval(cfg: EvalConfig) -> dict[str, Any]:
    from selfee.ray_runtime import ray_runtime

    if cfg.task is None or cfg.questions is None:
        raise ConfigError("give --task gsm8k|math|aqua|code and --questions FILE")
    if cfg.answers is None and not cfg.model:
        raise ConfigError("give --answers FILE.jsonl to score, or --model DIR / x.gguf "
                          "(or --base-url URL --model NAME) to generate and score")  # fmt: skip
    task = TASKS[cfg.task]
    started = time.monotonic()
    questions, bad_gold = load_questions(cfg, task)
    cfg.folder.mkdir(parents=True, exist_ok=True)
    log(f"{task.name}: {len(questions)} questions from {cfg.questions}"
        + (f" ({len(bad_gold)} without a usable {task.name} gold, left out)" if bad_gold else ""))  # fmt: skip
    failed: dict[str, str] = {}
    with ray_runtime(cfg.ray):
        if cfg.answers is not None:
            runs = {"forced": read_answer_file(cfg.answers)}
            _check_ids(cfg.answers, runs["forced"], questions)
            if cfg.autonomous_answers is not None:
                runs["autonomous"] = read_answer_file(cfg.autonomous_answers)
                _check_ids(cfg.autonomous_answers, runs["autonomous"], questions)
        else:
            runs, failed = generate_runs(cfg, questions)
        items, plan = _plan(task, questions, runs)
        scores, scored_now = score_all(cfg, task, items)
    results = [_question_result(q, plan[q.key], scores) for q in questions if q.key in plan]
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
    summary["seconds"] = round(time.monotonic() - started, 2)
    summary["config"] = dump_config(cfg)
    _write_outputs(cfg, summary)
    return summary


Plan = dict[str, Any]


def _plan(
    task: Task, questions: list[EvalQuestion], runs: dict[str, dict[str, list[dict[str, Any]]]]
) -> tuple[dict[str, tuple[Any, str]], dict[str, Plan]]:
    """Every text to score (by score key), and per question which key each turn uses."""
    items: dict[str, tuple[Any, str]] = {}

    def key_of(q: EvalQuestion, text: str) -> str:
        key = score_key(task.name, q.gold, text)
        items[key] = (q.gold, text)
        return key

    plan: dict[str, Plan] = {}
    for q in questions:
        forced = runs.get("forced", {}).get(q.key)
        if not forced:
            continue
        row = forced[0]
        chain = turns.chain_turns(_generation(row), _metadata(row).get("forced_verdicts"))
        entry: Plan = {"turns": [key_of(q, o) for o in chain.outputs],
                       "verdicts": chain.verdicts, "tokens": _tokens(row)}  # fmt: skip
        if auto := runs.get("autonomous", {}).get(q.key):
            revisions = _metadata(auto[0]).get("revisions")
            if not isinstance(revisions, int):
                revisions = len(turns.chain_turns(_generation(auto[0])).outputs) - 1
            entry["autonomous"] = (key_of(q, auto[0]["text"]), revisions, _tokens(auto[0]))
        if first := runs.get("first", {}).get(q.key):
            entry["first"] = (key_of(q, first[0]["text"]), _tokens(first[0]))
        entry["samples"] = [
            (key_of(q, s["text"]), _tokens(s) or 0) for s in runs.get("samples", {}).get(q.key, [])
        ]
        plan[q.key] = entry
    return items, plan


def _question_result(
    q: EvalQuestion, entry: Plan, scores: dict[str, turns.Score]
) -> turns.QuestionResult:
    result = turns.QuestionResult(
        q.question_id, [scores[k] for k in entry["turns"]], list(entry["verdicts"]),
        tokens=entry["tokens"],
    )  # fmt: skip
    if "autonomous" in entry:
        key, result.autonomous_revisions, result.autonomous_tokens = entry["autonomous"]
        result.autonomous = scores[key]
    if "first" in entry:
        key, result.first_tokens = entry["first"]
        result.first = scores[key]
    result.samples = [(scores[k], tokens) for k, tokens in entry["samples"]]
    return result


def _write_outputs(cfg: EvalConfig, summary: dict[str, Any]) -> None:
    folder = cfg.folder
    (folder / "eval.json").write_text(json.dumps(summary, indent=2) + "\n")
    outputs = {"report": folder / "eval.json"}
    if cfg.plot is not None:
        outputs["plot"] = report.plot(summary, cfg.plot)
    inputs = {"questions": cfg.questions} | ({"answers": cfg.answers} if cfg.answers else {})
    lineage.write_manifest(folder / "eval.manifest.json", "eval", inputs, summary["config"], outputs,
                           {"n": summary["n"], "turns": summary["turns"]}, summary["seconds"])  # fmt: skip
