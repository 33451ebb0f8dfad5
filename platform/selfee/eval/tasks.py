"""The checkable tasks: where each finds its gold, how it reads a model's answer, what is equal.

Questions come as question.jsonl rows (``question_id``, ``text``, ``gold`` in the task's
public format) or as the collect stage's Instruction rows (``id``, ``instruction``,
``output``, ``meta``): GSM8K's worked answer ending in ``#### 42``, MATH's solution with its
``\\boxed{}``, AQuA's letter (``meta.correct``), MBPP's asserts (``meta.tests``) or
CodeContests' stdin/stdout pairs (``meta.io_tests``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from selfee.eval import answers
from selfee.eval.sandbox import CodeTests

TaskName = Literal["gsm8k", "math", "aqua", "code"]


@dataclass(frozen=True)
class Task:
    name: TaskName
    gold_format: str  # for messages: what a gold of this task looks like
    read_gold: Callable[[Any], Any | None]  # the question's gold → the task's gold (JSON data)
    read_answer: Callable[[str], str | None]  # a model's text → its answer (None: unreadable)
    same: Callable[[str, Any], bool]  # a read answer equals the gold (code: run instead)
    vote_key: Callable[[str], str] | None = None  # answers that count as one in a vote
    runs_code: bool = False


def _same_number(answer: str, gold: Any) -> bool:
    return answers.parse_number(answer) == answers.parse_number(gold)


def _same_text(answer: str, gold: Any) -> bool:
    return answer == gold


def _number_key(answer: str) -> str:
    return str(answers.parse_number(answer))


def _math_key(answer: str) -> str:
    normalized = answers.normalize_math(answer)
    value = answers.math_value(normalized)
    return normalized if value is None else str(value)


def _not_compared(answer: str, gold: Any) -> bool:
    raise TypeError("code answers are run against their tests (selfee.eval.sandbox)")


def _number(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return None
    found = answers.gsm8k_gold(value)
    return None if found is None else str(found)


def _math_gold(value: Any) -> str | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        return None
    boxed = answers.last_boxed(value)
    if boxed is not None:
        return boxed
    return value.strip() if "\n" not in value.strip() and len(value) < 100 else None


def _math_answer(text: str) -> str | None:
    return answers.last_boxed(text)


def _gsm8k_answer(text: str) -> str | None:
    found = answers.gsm8k_answer(text)
    return None if found is None else str(found)


def _aqua_gold(value: Any) -> str | None:
    return answers.aqua_gold(value) if isinstance(value, str) else None


def _code_gold(value: Any) -> dict[str, Any] | None:
    spec = CodeTests.from_gold(value)
    return None if spec is None else spec.to_gold()


TASKS: dict[str, Task] = {
    "gsm8k": Task("gsm8k", "a worked answer ending in '#### <number>', or a number",
                  _number, _gsm8k_answer, _same_number, _number_key),
    "math": Task("math", "a solution with \\boxed{...}, or the answer itself",
                 _math_gold, _math_answer, answers.math_equal, _math_key),
    "aqua": Task("aqua", "an option letter A-E", _aqua_gold, answers.aqua_letter, _same_text,
                 str),
    "code": Task("code", "a list of assert statements, {'tests': [...], 'setup': ...} or "
                 "{'io': [{'input': ..., 'output': ...}]}", _code_gold, answers.extract_code,
                 _not_compared, runs_code=True),
}  # fmt: skip


def gold_of_row(task: Task, row: dict[str, Any]) -> Any | None:
    """The gold of a question row (``gold``) or an Instruction row (``output`` / ``meta``)."""
    if "gold" in row:
        return task.read_gold(row["gold"])
    meta = row.get("meta") if isinstance(row.get("meta"), dict) else {}
    if task.name == "code":
        if meta.get("tests"):
            return task.read_gold({"tests": meta["tests"], "setup": meta.get("test_setup_code")})
        return task.read_gold({"io": meta.get("io_tests")})
    if task.name == "aqua" and meta.get("correct"):
        return task.read_gold(meta["correct"])
    if task.name == "gsm8k" and meta.get("final_answer"):
        return task.read_gold(meta["final_answer"])
    return task.read_gold(row.get("output"))
