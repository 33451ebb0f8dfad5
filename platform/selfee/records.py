"""Data contracts shared by the stages (ARCHITECTURE.md): ids and JSON Lines files."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, NonNegativeInt, model_validator

from selfee.errors import ConfigError

INSTRUCTION_FIELDS = ("id", "dataset", "instruction", "input", "output", "meta")


def instruction_id(dataset: str, instruction: str, input: str = "") -> str:
    """Stable across runs and machines: the same source row always gets the same id."""
    key = json.dumps([dataset, instruction, input], ensure_ascii=False)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def stable_fraction(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts``: the same on every machine and run."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def make_instruction(
    dataset: str,
    instruction: str,
    input: str = "",
    output: str = "",
    **meta: Any,
) -> dict[str, Any]:
    return {
        "id": instruction_id(dataset, instruction, input),
        "dataset": dataset,
        "instruction": instruction,
        "input": input,
        "output": output,
        "meta": meta,
    }


class ChainOutput(BaseModel):
    model_config = ConfigDict(strict=True)

    output: str
    feedback: str


class ChainRow(BaseModel):
    """The Chain contract (augment's output), checked before a journaled row is trusted."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str
    dataset: str
    instruction: str
    input: str
    output: str
    outputs: list[ChainOutput]
    iteration: NonNegativeInt
    iteration_truncated: bool
    usage: dict[str, NonNegativeInt] | None = None
    error: str | None

    @model_validator(mode="after")
    def _complete(self) -> ChainRow:
        if self.iteration != len(self.outputs):
            raise ValueError(f"iteration {self.iteration} != {len(self.outputs)} outputs")
        if self.error is None and not self.outputs:
            raise ValueError("a chain without error needs at least one output")
        return self


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSON Lines file; a bad line is a ``ValueError`` naming the file and line."""
    for _, row in _numbered_rows(path):
        yield row


def read_objects(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, row) of a JSON Lines file whose every row must be a JSON object."""
    for n, row in _numbered_rows(path):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{n} is not a JSON object (got {type(row).__name__})")
        yield n, row


def read_object_rows(path: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of a JSON Lines file of objects; a missing or unreadable file is
    a ``ConfigError`` that names it."""
    try:
        return list(read_objects(path))
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} does not exist") from None
    except ValueError as e:
        raise ConfigError(str(e)) from None


def question_of_row(row: dict[str, Any]) -> tuple[Any, str, str] | None:
    """(question id, text, input) of a question row (SelFee/Vicuna ``question.jsonl``, or a
    FastChat answer row; an optional ``input``, as Alpaca's) or an Instruction row (what
    ``selfee collect`` writes: ``id``, ``instruction``, ``input``)."""
    input_ = row["input"] if isinstance(row.get("input"), str) else ""
    if isinstance(row.get("text"), str) and isinstance(row.get("question_id"), str | int | float):
        return row["question_id"], row["text"], input_
    if isinstance(row.get("instruction"), str) and isinstance(row.get("id"), str):
        return row["id"], row["instruction"], input_
    return None


def question_with_input(question: dict[str, Any]) -> str:
    """A question as a reader (or a judge) sees it: its text, and its input below it."""
    input_ = question.get("input") or ""
    return question["text"] + (f"\n\n{input_}" if input_ else "")


# The Vicuna category of a collected dataset's questions (the judge has its own templates for
# math and coding questions); other datasets are their own category.
DATASET_CATEGORY = {
    **dict.fromkeys(("aqua", "gsm8k", "math"), "math"),
    **dict.fromkeys(("conala", "mbpp", "code_contests", "drrepair"), "coding"),
}


def read_questions(path: Path, what: str = "questions") -> list[dict[str, Any]]:
    """Rows of a question file (or a FastChat answer file): each an object with a
    ``question_id`` (a string or number, once per file), a string ``text`` and an optional
    ``input``. Instruction rows (``id``, ``instruction``, ``input``) are read as such
    questions, in their dataset's category (``DATASET_CATEGORY``)."""
    rows = read_object_rows(path, what)
    questions, seen = [], set()
    for n, row in rows:
        found = question_of_row(row)
        if found is None:
            raise ConfigError(f"{path}: line {n} needs 'question_id' and a string 'text' "
                              "(question.jsonl) or 'id' and 'instruction' (Instruction rows)")  # fmt: skip
        qid, text, input_ = found
        if qid in seen:
            raise ConfigError(f"{path}: line {n} repeats question_id {qid!r}")
        seen.add(qid)
        if "question_id" not in row:  # an Instruction row
            dataset = str(row.get("dataset") or "")
            row = {"question_id": qid, "text": text,
                   "category": DATASET_CATEGORY.get(dataset, dataset),
                   **({"input": input_} if input_ else {})}  # fmt: skip
        questions.append(row)
    if not rows:
        raise ConfigError(f"{path} holds no {what}")
    return questions


def _numbered_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                yield n, json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{path}:{n} is not UTF-8 text (byte 0x{raw[e.start]:02x} at column "
                    f"{e.start + 1}); save the file as UTF-8"
                ) from None
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n} is not valid JSON: {e.msg}") from None
            except RecursionError:
                raise ValueError(f"{path}:{n} is JSON nested too deeply to read") from None


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON Lines or Parquet file (Parquet keeps ``meta`` as a JSON string)."""
    if str(path).endswith(".parquet"):
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
        for row in rows:
            if isinstance(row.get("meta"), str):
                row["meta"] = json.loads(row["meta"])
        return rows
    return list(read_jsonl(path))


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, path)
    return count


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """A folder written in full or not at all: fill the yielded staging folder; it replaces
    ``path`` only when the block finishes without an error."""
    path = Path(path)
    staging = path.with_name(path.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    os.replace(staging, path)
