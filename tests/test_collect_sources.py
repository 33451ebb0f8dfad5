"""Readers and shapers for each source's public format, and the text filters."""

from __future__ import annotations

from pathlib import Path

import pytest

from collect_data import jsonl, write_sources
from selfee.collect import filters
from selfee.collect.shape import shape_row
from selfee.collect.sources import CODE_PREFIX, BadRow, Skip, read_records


def shaped(path: Path, source: str) -> tuple[list[dict], list[str]]:
    rows, skipped = [], []
    for _, raw in read_records(path):
        assert not isinstance(raw, BadRow)
        try:
            rows.append(shape_row(source, raw))
        except Skip as s:
            skipped.append(s.reason)
    return rows, skipped


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_sources(tmp_path_factory.mktemp("sources"))


def test_alpaca_keeps_instruction_input_and_gold(sources) -> None:
    rows, _ = shaped(sources["alpaca"], "alpaca")
    assert rows[1]["instruction"] == "Translate to French." and rows[1]["input"] == "Good night"
    assert rows[1]["output"] == "Bonne nuit" and rows[1]["dataset"] == "alpaca"


def test_math_sources(sources) -> None:
    aqua, _ = shaped(sources["aqua"], "aqua")
    assert "Answer choices: A)10 B)12 C)14 D)16" in aqua[0]["instruction"]
    assert aqua[0]["output"].endswith("The answer is C.")
    gsm, _ = shaped(sources["gsm8k"], "gsm8k")
    assert gsm[0]["meta"]["final_answer"] == "8" and "####" in gsm[0]["output"]
    math, _ = shaped(sources["math"], "math")  # a folder of one-problem JSON files
    assert [m["meta"]["level"] for m in math] == ["Level 1", "Level 1"]
    assert math[0]["output"] == "$x = \\boxed{2}$"


def test_code_sources(sources) -> None:
    conala, _ = shaped(sources["conala"], "conala")
    assert conala[0]["instruction"] == CODE_PREFIX + "reverse list `items` in place"
    assert conala[1]["instruction"] == CODE_PREFIX + "sort dict by value"  # no rewritten intent
    mbpp, _ = shaped(sources["mbpp"], "mbpp")
    assert "assert largest(1, 2, 3) == 3" in mbpp[0]["instruction"]
    contests, skipped = shaped(sources["code_contests"], "code_contests")
    assert (
        contests[0]["output"].startswith("print(") and contests[0]["meta"]["language"] == "python3"
    )
    assert skipped == ["no solution"]
    repair, _ = shaped(sources["drrepair"], "drrepair")
    assert (
        repair[0]["input"] == "int main() { return 0 }"
        and "expected ';'" in repair[0]["instruction"]
    )


def test_flan_excludes_code_repair_tasks(sources) -> None:
    rows, skipped = shaped(sources["flan"], "flan")
    assert skipped == ["excluded task"] * 3
    assert {r["meta"]["task"] for r in rows} == {"sentiment", "translation"}


def test_sharegpt_first_turns_english_questions_html_to_text(sources) -> None:
    rows, skipped = shaped(sources["sharegpt"], "sharegpt")
    first = rows[0]
    assert first["instruction"] == "How do I politely decline a meeting invitation?"
    assert "<" not in first["output"] and "- Be brief." in first["output"]
    assert "```\nDear Sam, I can't make it.\n```" in first["output"]
    assert sorted(skipped) == ["asks nothing", "no model turn", "not English"]
    assert [r["meta"]["conversation_id"] for r in rows] == ["a", "d", "f"]


def test_ids_are_stable_and_distinct(sources) -> None:
    first, _ = shaped(sources["gsm8k"], "gsm8k")
    again, _ = shaped(sources["gsm8k"], "gsm8k")
    assert [r["id"] for r in first] == [r["id"] for r in again]
    assert len({r["id"] for r in first}) == len(first)
    assert all(len(r["id"]) == 16 for r in first)


def test_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "g.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n{"question": \n')
    rows = list(read_records(path))
    assert isinstance(rows[1][1], BadRow) and f"{path}:2" in str(rows[1][1])
    with pytest.raises(BadRow, match="field 'answer' must be str"):
        shape_row("gsm8k", {"question": "q", "answer": 3})
    jsonl(tmp_path / "n.jsonl", [["not", "an", "object"]])
    with pytest.raises(BadRow, match="expected a JSON object"):
        shape_row("alpaca", next(read_records(tmp_path / "n.jsonl"))[1])


@pytest.mark.parametrize(
    ("text", "asks"),
    [
        ("What is the capital of France", True),
        ("Can you help me with my essay", True),
        ("Write a limerick about cats.", True),
        ("I need a plan for my garden.", True),
        ("My code crashes with a KeyError. Any idea?", True),
        ("ok thanks", False),
        ("Here is my essay about dogs.", False),
        ("The weather today.", False),
        ("", False),
    ],
)
def test_asks_something(text: str, asks: bool) -> None:
    assert filters.asks_something(text) is asks


def test_english_check_ignores_code_and_short_text() -> None:
    assert filters.is_english("How do I sort a list in Python?")
    assert not filters.is_english("Wie sortiere ich eine Liste in Python und warum ist das so?")
    assert filters.is_english("```\nfor i in range(3): print(i)\n```")
    assert filters.is_english("Use `sorted(x)` to sort the items of the list in Python.")


def test_dedup_key_ignores_case_space_and_punctuation() -> None:
    assert filters.normalize_for_dedup("Give three tips  for staying healthy.") == \
        filters.normalize_for_dedup("give three tips for staying healthy!")  # fmt: skip
    assert filters.normalize_for_dedup("a b") != filters.normalize_for_dedup("a c")
