"""The SelFee sources: how each public dataset's rows become Instruction rows.

Reading (files → raw rows with their location) is shared; shaping (raw row → instruction,
input, gold output, meta) is one small function per source. A shaper raises ``BadRow`` for
input that is not in the source's format and ``Skip`` for a row a filter removes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from selfee.collect import filters

CODE_PREFIX = "generate the python code snippet from the following natural language:\n"


class BadRow(ValueError):
    """A row (or file) that is not in the source's format."""


class Skip(Exception):
    """A valid row that a filter removes; ``reason`` is counted in the summary."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- reading ---------------------------------------------------------------------------

DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


def data_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
        if not files:
            raise BadRow(f"{path}: no .json, .jsonl or .parquet files in this folder")
        return files
    if not path.exists():
        raise BadRow(f"{path}: no such file or folder")
    return [path]


def read_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, raw row) for a JSON array, JSON Lines, a single JSON object or Parquet.

    Unparseable rows come back as ``(location, BadRow)`` so the caller decides whether to
    stop or count them; a file that is not UTF-8 JSON text (binary, Latin-1, nested past
    the parser's depth) gives a ``BadRow`` naming the file and line, never an exception.
    """
    for file in data_files(path):
        if file.suffix == ".parquet":
            yield from _read_parquet(file)
            continue
        data = file.read_bytes()
        if b"\x00" in data[:8192]:
            yield str(file), BadRow(f"{file}: a binary file, not JSON or JSON Lines text")
            continue
        text = data.decode("utf-8-sig", errors="surrogateescape")  # bad bytes kept, marked
        stripped = text.lstrip()
        lines = text.splitlines()
        whole = stripped.startswith("[") or (
            stripped.startswith("{") and len([ln for ln in lines if ln.strip()]) > 1
        )  # a JSON array, or one pretty-printed object (MATH's one-file-per-problem layout)
        if whole:
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                rows = None  # "{" lines: JSON Lines after all
                if stripped.startswith("["):
                    yield _not_utf8(file, lines) or (
                        f"{file}:{e.lineno}",
                        BadRow(f"{file}:{e.lineno}: invalid JSON ({e.msg})"),
                    )
                    continue
            except RecursionError:
                yield str(file), BadRow(f"{file}: JSON nested too deeply to read")
                continue
            if rows is not None:
                if (bad := _not_utf8(file, lines)) is not None:
                    yield bad
                elif isinstance(rows, list):
                    yield from ((f"{file}[{i}]", row) for i, row in enumerate(rows))
                else:
                    yield str(file), rows
                continue
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if (bad := _not_utf8(file, [line], n)) is not None:
                yield bad
                continue
            try:
                yield f"{file}:{n}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{file}:{n}", BadRow(f"{file}:{n}: invalid JSON ({e.msg})")
            except RecursionError:
                yield f"{file}:{n}", BadRow(f"{file}:{n}: JSON nested too deeply to read")


def _not_utf8(file: Path, lines: list[str], first: int = 1) -> tuple[str, BadRow] | None:
    """The first line holding bytes that are not UTF-8 (decoded as lone surrogates)."""
    for n, line in enumerate(lines, first):
        at = next((i for i, ch in enumerate(line) if "\udc80" <= ch <= "\udcff"), None)
        if at is not None:
            byte = ord(line[at]) - 0xDC00
            return f"{file}:{n}", BadRow(
                f"{file}:{n}: not UTF-8 text (byte 0x{byte:02x} at column {at + 1}); "
                "save the file as UTF-8"
            )
    return None


def _read_parquet(file: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except Exception as e:  # pyarrow raises several types for a broken file
        yield str(file), BadRow(f"{file}: not a readable Parquet file ({e})")
        return
    for i, row in enumerate(table.to_pylist()):
        yield f"{file}#row{i}", row


# --- shaping ---------------------------------------------------------------------------


def _field(row: Any, name: str, kind: type = str, required: bool = True) -> Any:
    if not isinstance(row, dict):
        raise BadRow(f"expected a JSON object, got {type(row).__name__}")
    value = row.get(name)
    if value is None and not required:
        return kind()
    if not isinstance(value, kind):
        raise BadRow(f"field '{name}' must be {kind.__name__}, got {type(value).__name__}")
    return value


Shaped = dict[str, Any]  # instruction, input, output, meta


def shape_alpaca(row: Any) -> Shaped:
    return {
        "instruction": _field(row, "instruction"),
        "input": _field(row, "input", required=False),
        "output": _field(row, "output", required=False),
        "meta": {},
    }


def shape_aqua(row: Any) -> Shaped:
    options = _field(row, "options", list)
    correct = _field(row, "correct")
    return {
        "instruction": f"{_field(row, 'question')}\nAnswer choices: {' '.join(map(str, options))}",
        "input": "",
        "output": f"{_field(row, 'rationale')}\nThe answer is {correct}.",
        "meta": {"correct": correct},
    }


def shape_gsm8k(row: Any) -> Shaped:
    answer = _field(row, "answer")
    final = answer.rsplit("####", 1)[1].strip() if "####" in answer else ""
    return {"instruction": _field(row, "question"), "input": "", "output": answer,
            "meta": {"final_answer": final}}  # fmt: skip


def shape_math(row: Any) -> Shaped:
    return {
        "instruction": _field(row, "problem"),
        "input": "",
        "output": _field(row, "solution"),
        "meta": {"level": _field(row, "level", required=False),
                 "type": _field(row, "type", required=False)},
    }  # fmt: skip


def shape_conala(row: Any) -> Shaped:
    intent = _field(row, "rewritten_intent", required=False) or _field(row, "intent")
    return {"instruction": CODE_PREFIX + intent, "input": "", "output": _field(row, "snippet"),
            "meta": {}}  # fmt: skip


def shape_mbpp(row: Any) -> Shaped:
    tests = _field(row, "test_list", list, required=False)
    instruction = _field(row, "text")
    if tests:
        instruction += "\nYour code should pass these tests:\n" + "\n".join(map(str, tests))
    meta = {"task_id": row.get("task_id")}
    if tests:  # kept for `selfee eval --task code`
        meta |= {
            "tests": list(map(str, tests)),
            "test_setup_code": row.get("test_setup_code") or "",
        }
    return {"instruction": instruction, "input": "", "output": _field(row, "code"), "meta": meta}


# CodeContests' language codes (the dataset's Language enum).
_CC_LANGUAGES = {0: "unknown", 1: "python2", 2: "cpp", 3: "python3", 4: "java"}
_CC_PREFERENCE = ("python3", "python2", "cpp", "java")


def shape_code_contests(row: Any) -> Shaped:
    solutions = _field(row, "solutions", dict)
    languages = solutions.get("language") or []
    codes = solutions.get("solution") or []
    if (
        not isinstance(languages, list)
        or not isinstance(codes, list)
        or len(languages) != len(codes)
    ):
        raise BadRow("'solutions' must hold equal-length lists 'language' and 'solution'")
    named = [(_CC_LANGUAGES.get(lang, str(lang)) if isinstance(lang, int) else str(lang).lower(), code)
             for lang, code in zip(languages, codes, strict=True)]  # fmt: skip
    if not named:
        raise Skip("no solution")
    rank = {lang: i for i, lang in enumerate(_CC_PREFERENCE)}
    language, code = min(named, key=lambda pair: rank.get(pair[0], len(rank)))
    return {
        "instruction": "Solve the following programming problem. Write the program in "
        f"{'Python' if language.startswith('python') else language.upper()}.\n\n"
        + _field(row, "description"),
        "input": "",
        "output": code,
        "meta": {"language": language, "name": row.get("name", ""), **_io_tests(row)},
    }


def _io_tests(row: Any) -> dict[str, Any]:
    """CodeContests' public tests as stdin/stdout pairs, for `selfee eval --task code`."""
    public = row.get("public_tests") if isinstance(row, dict) else None
    if not isinstance(public, dict):
        return {}
    inputs, outputs = public.get("input") or [], public.get("output") or []
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        return {}
    pairs = [{"input": i, "output": o} for i, o in zip(inputs, outputs, strict=True)
             if isinstance(i, str) and isinstance(o, str)]  # fmt: skip
    return {"io_tests": pairs} if pairs else {}


def shape_drrepair(row: Any) -> Shaped:
    """Our documented DrRepair layout: JSON Lines of ``{"broken": program, "error": compiler or
    runtime message, "fixed": program, "language": optional}``."""
    language = _field(row, "language", required=False) or "C"
    return {
        "instruction": f"Fix the following {language} program. It fails with this error:\n"
        + _field(row, "error"),
        "input": _field(row, "broken"),
        "output": _field(row, "fixed"),
        "meta": {"language": language},
    }


def shape_flan(row: Any) -> Shaped:
    task = _field(row, "task", required=False) or _field(row, "task_name", required=False)
    if not task:
        raise BadRow("a FLAN row needs 'task' (or 'task_name')")
    if any(excluded in task.lower() for excluded in FLAN_EXCLUDED_TASKS):
        raise Skip("excluded task")
    return {"instruction": _field(row, "inputs"), "input": "", "output": _field(row, "targets"),
            "meta": {"task": task}}  # fmt: skip


# Code repair and contests come from their own sources, as upstream did.
FLAN_EXCLUDED_TASKS = ("code_contests", "drrepair", "program_repair", "code_repair")

_HUMAN = {"human", "user"}
_MODEL = {"gpt", "chatgpt", "bard", "bing", "assistant", "model"}


def shape_sharegpt(row: Any) -> Shaped:
    turns = _field(row, "conversations", list)
    human = next(
        (i for i, t in enumerate(turns) if isinstance(t, dict) and t.get("from") in _HUMAN), None
    )
    if human is None:
        raise Skip("no human turn")
    reply = next(
        (t for t in turns[human + 1 :] if isinstance(t, dict) and t.get("from") in _MODEL), None
    )
    if reply is None:
        raise Skip("no model turn")
    instruction = filters.html_to_text(_field(turns[human], "value"))
    answer = filters.html_to_text(_field(reply, "value"))
    if not instruction or not answer:
        raise Skip("empty turn")
    if not (filters.is_english(instruction) and filters.is_english(answer)):
        raise Skip("not English")
    if not filters.asks_something(instruction):
        raise Skip("asks nothing")
    return {"instruction": instruction, "input": "", "output": answer,
            "meta": {"conversation_id": row.get("id", "")}}  # fmt: skip


# Source name → shaper; the names are the values of ``name`` in a collect config.
SOURCES: dict[str, Callable[[Any], Shaped]] = {
    "alpaca": shape_alpaca,
    "aqua": shape_aqua,
    "gsm8k": shape_gsm8k,
    "math": shape_math,
    "conala": shape_conala,
    "mbpp": shape_mbpp,
    "code_contests": shape_code_contests,
    "drrepair": shape_drrepair,
    "flan": shape_flan,
    "sharegpt": shape_sharegpt,
}
