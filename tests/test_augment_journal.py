"""The resume journal: torn lines, latest attempt wins, exactly once in input order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfee import journal
from selfee.augment import resume
from selfee.config import ConfigError


def row(key: str, error: str | None = None) -> dict:
    return {"id": key, "outputs": [], "error": error}


def test_a_torn_last_line_is_dropped_before_appending(tmp_path: Path) -> None:
    path = tmp_path / resume.JOURNAL
    path.write_text(json.dumps(row("a")) + "\n" + '{"id": "b", "outp')  # crash mid-write
    done, bad = journal.read_journal(path)
    assert set(done) == {"a"} and bad == 1
    with journal.Journal(path) as j:
        j.write(row("c"))
    done, bad = journal.read_journal(path)
    assert set(done) == {"a", "c"} and bad == 0


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
    done, _ = journal.read_journal(path)
    rows = resume.finalize(tmp_path, [{"id": k} for k in "abc"], done)
    assert [r["id"] for r in rows] == ["a", "c"] and rows[0]["error"] is None
    written = [json.loads(line) for line in (tmp_path / resume.CHAINS).read_text().splitlines()]
    assert written == rows
    compacted, _ = journal.read_journal(path)
    assert set(compacted) == {"a", "c", "zz"}  # one line each; other inputs' rows kept


def test_other_settings_are_refused_unless_overwritten(tmp_path: Path) -> None:
    resume.check_settings(tmp_path, {"model": "m1", "max_iterations": 5}, overwrite=False)
    (tmp_path / resume.JOURNAL).write_text(json.dumps(row("a")) + "\n")
    resume.check_settings(tmp_path, {"model": "m1", "max_iterations": 5}, overwrite=False)
    with pytest.raises(ConfigError, match=r"different: model\).*--overwrite"):
        resume.check_settings(tmp_path, {"model": "m2", "max_iterations": 5}, overwrite=False)
    resume.check_settings(tmp_path, {"model": "m2", "max_iterations": 5}, overwrite=True)
    assert not (tmp_path / resume.JOURNAL).exists()
