"""The resume journal: torn lines, latest attempt wins, exactly once in input order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfee import journal
from selfee.augment import resume
from selfee.errors import ConfigError
from selfee.records import ChainRow


def row(key: str, error: str | None = None) -> dict:
    return {"id": key, "outputs": [], "error": error}


def test_a_torn_last_line_is_dropped_before_appending(tmp_path: Path) -> None:
    path = tmp_path / resume.JOURNAL
    path.write_text(json.dumps(row("a")) + "\n" + '{"id": "b", "outp')  # crash mid-write
    read = journal.read_journal(path)
    assert set(read.rows) == {"a"} and read.unreadable == 1
    with journal.Journal(path) as j:
        j.write(row("c"))
    read = journal.read_journal(path)
    assert set(read.rows) == {"a", "c"} and read.skipped == 0


def test_a_line_torn_inside_a_multibyte_character_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / resume.JOURNAL
    whole = json.dumps(chain("a", "déjà vu 日本"), ensure_ascii=False).encode()
    torn = json.dumps(chain("b", "日本語"), ensure_ascii=False).encode()
    path.write_bytes(whole + b"\n" + torn[: torn.index("日".encode()) + 2])  # 2 of 3 bytes
    read = journal.read_journal(path, ChainRow)
    assert set(read.rows) == {"a"} and (read.unreadable, read.invalid) == (1, 0)
    path.write_bytes(whole + b"\n\xff\xfe not utf-8\n")  # a whole line of bad bytes too
    assert journal.read_journal(path, ChainRow).unreadable == 1
    with journal.Journal(path) as j:
        j.write(chain("c", "ok"))
    assert set(journal.read_journal(path, ChainRow).rows) == {"a", "c"}


def chain(key: str, text: str, **changes: object) -> dict:
    base = {"id": key, "dataset": "d", "instruction": "i", "input": "", "output": "",
            "outputs": [{"output": text, "feedback": "Revision is not needed."}],
            "iteration": 1, "iteration_truncated": False, "error": None}  # fmt: skip
    return {**base, **changes}


@pytest.mark.parametrize(
    "bad",
    [
        {"id": "x"},  # the id alone
        chain("x", "t", outputs="not a list"),
        chain("x", "t", outputs=[{"output": 3, "feedback": "f"}]),
        chain("x", "t", iteration=5),  # says 5 outputs, holds 1
        chain("x", "t", outputs=[], iteration=0),  # no error and nothing written
        chain("x", "t", iteration_truncated="no"),
        chain("x", "t", error=["boom"]),
        ["a list", "not a row"],
    ],
)
def test_rows_that_break_the_chain_contract_run_again(tmp_path: Path, bad: object) -> None:
    path = tmp_path / resume.JOURNAL
    good = chain("a", "fine")
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    read = journal.read_journal(path, ChainRow)
    assert read.rows == {"a": good} and (read.unreadable, read.invalid) == (0, 1)
    inputs = [{"id": "a"}, {"id": "x"}]
    assert [r["id"] for r in resume.pending(inputs, read.rows, retry_errors=False)] == ["x"]
    assert "their items run again" in read.describe(path)


def test_pending_and_retry_errors() -> None:
    inputs = [{"id": k} for k in "abcd"]
    done = {"a": row("a"), "b": row("b", "RateLimitError: x")}
    assert [r["id"] for r in resume.pending(inputs, done, retry_errors=False)] == ["c", "d"]
    assert [r["id"] for r in resume.pending(inputs, done, retry_errors=True)] == ["b", "c", "d"]


def test_finalize_keeps_input_order_and_the_latest_attempt(tmp_path: Path) -> None:
    path = tmp_path / resume.JOURNAL
    with journal.Journal(path) as j:
        for r in [row("c"), row("a", "boom"), row("zz"), row("a")]:
            j.write(r)
    done = journal.read_journal(path).rows
    rows = resume.finalize(tmp_path, [{"id": k} for k in "abc"], done)
    assert [r["id"] for r in rows] == ["a", "c"] and rows[0]["error"] is None
    written = [json.loads(line) for line in (tmp_path / resume.CHAINS).read_text().splitlines()]
    assert written == rows
    compacted = journal.read_journal(path).rows
    assert set(compacted) == {"a", "c", "zz"}  # one line each; other inputs' rows kept


def test_other_settings_are_refused_unless_overwritten(tmp_path: Path) -> None:
    resume.check_settings(tmp_path, {"model": "m1", "max_iterations": 5}, overwrite=False)
    (tmp_path / resume.JOURNAL).write_text(json.dumps(row("a")) + "\n")
    resume.check_settings(tmp_path, {"model": "m1", "max_iterations": 5}, overwrite=False)
    with pytest.raises(ConfigError, match=r"different: model\).*--overwrite"):
        resume.check_settings(tmp_path, {"model": "m2", "max_iterations": 5}, overwrite=False)
    resume.check_settings(tmp_path, {"model": "m2", "max_iterations": 5}, overwrite=True)
    assert not (tmp_path / resume.JOURNAL).exists()


def test_infer_and_judge_journal_rows_are_checked_too(tmp_path: Path) -> None:
    from selfee.infer.job import JournaledAnswer
    from selfee.judge.job import CachedJudgment

    result = {"text": "Red.", "whole_generation": "...Red.", "revisions": 1, "forced_rewrites": 0,
              "tokens": 12, "prompt_tokens": 30, "finish_reason": "verdict", "calls": 2}  # fmt: skip
    answer = {"id": "1", "question_id": 1, "result": result, "latency_s": 0.5, "device": "cpu",
              "fingerprint": "abc"}  # fmt: skip
    judgment = {"id": "k", "text": "8 9", "score": [8, 9], "error": None, "asked": 1}
    cases = [
        (JournaledAnswer, answer, {**answer, "result": {**result, "tokens": -1}}),
        (JournaledAnswer, answer, {"id": "1", "question_id": 1}),  # no result: never trusted
        (CachedJudgment, judgment, {**judgment, "score": [8, float("nan")]}),
        (CachedJudgment, judgment, {**judgment, "score": [8]}),
        (CachedJudgment, judgment, {**judgment, "error": "timeout"}),
    ]
    for contract, good, bad in cases:
        path = tmp_path / f"{contract.__name__}.jsonl"
        other = {**good, "id": "other"}
        path.write_text(json.dumps(good) + "\n" + json.dumps(other) + "\n"
                        + json.dumps({**bad, "id": "other"}) + "\n")  # fmt: skip
        read = journal.read_journal(path, contract)
        assert read.rows == {good["id"]: good} and read.invalid == 1, bad  # "other" runs again
