"""The questions an evaluation scores (each with a gold this task can read) and answer
files given to score."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfee.errors import ConfigError
from selfee.eval.config import EvalConfig
from selfee.eval.tasks import Task, gold_of_row
from selfee.records import question_of_row, read_object_rows


def log(message: str) -> None:
    """Progress goes to stderr: stdout carries the report (``--json``: one object)."""
    print(f"[eval] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class EvalQuestion:
    question_id: Any
    text: str
    gold: Any
    input: str = ""  # an Instruction row's input, below the text in the prompt

    @property
    def key(self) -> str:
        return json.dumps(self.question_id)


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
        qid, text, input_ = found
        if json.dumps(qid) in seen:
            raise ConfigError(f"{cfg.questions}:{n}: question {qid!r} appears twice")
        seen.add(json.dumps(qid))
        gold = gold_of_row(task, row)
        if gold is None:
            bad_gold.append(str(qid))
            continue
        questions.append(EvalQuestion(qid, text, gold, input_))
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


def check_ids(path: Path, answers: dict[str, list], questions: list[EvalQuestion]) -> None:
    keys = {q.key for q in questions}
    if answers and not keys & set(answers):
        raise ConfigError(
            f"{path}: its question ids match none of the questions (answers have e.g. "
            f"{next(iter(answers))}, questions {questions[0].key}): are they for this file?"
        )


# --- generation -----------------------------------------------------------------------
