"""Scoring: every distinct (text, gold) once, on Ray Data (code in the sandbox), each score
journaled under a hash of task, gold and text; and which score each turn of each question
uses."""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from selfee import journal
from selfee.driver import drain
from selfee.eval import turns
from selfee.eval.config import EvalConfig
from selfee.eval.inputs import EvalQuestion, log
from selfee.eval.sandbox import CodeTests, SandboxLimits, run_program
from selfee.eval.tasks import TASKS, Task
from selfee.progress import format_duration, format_eta

SCORES = "scores.journal.jsonl"  # the journal: ``EvalStage`` discards it on --overwrite


class ScoreRow(BaseModel):
    """A journaled score, checked before it is trusted."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str
    correct: bool
    answer: str | None
    detail: str


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

    journal_path = cfg.folder / SCORES
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
            started = time.monotonic()

            def on_row(row: dict[str, Any]) -> bool:
                out.write(row)
                saved.rows[row["id"]] = row
                return False

            def status() -> str:
                done = len(saved.rows) - scored_before
                return _progress(done, len(work), time.monotonic() - started)

            scored_before = len(saved.rows)
            drain(dataset, "eval", "scoring", "text", len(work), on_row, status, lambda: "",
                  cfg.progress_interval_s, log, err=True)  # fmt: skip
    scores = {
        key: turns.Score(row["correct"], row["answer"], row["detail"])
        for key, row in saved.rows.items()
        if key in items
    }
    return scores, len(work)


def _progress(done: int, total: int, seconds: float) -> str:
    return (f"scored {done}/{total} ({done / max(seconds, 1e-9):.1f}/s) · elapsed "
            f"{format_duration(seconds)} · ETA {format_eta(seconds, done, total)}")  # fmt: skip


def _metadata(row: dict[str, Any]) -> dict[str, Any]:
    meta = row.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _tokens(row: dict[str, Any]) -> int | None:
    tokens = _metadata(row).get("tokens")
    return tokens if isinstance(tokens, int) else None


def _generation(row: dict[str, Any]) -> str:
    whole = row.get("whole_generation")
    return whole if isinstance(whole, str) and whole else row["text"]


Plan = dict[str, Any]


def plan_scores(
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


def question_result(
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
