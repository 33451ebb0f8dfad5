"""The augmentation job on the shared local Ray against offline teachers over real HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from conftest import check_manifest
from selfee.augment.config import AugmentConfig
from selfee.augment.job import run_augment
from selfee.augment.loop import STOP_MAX_ITERATIONS, STOP_NOT_NEEDED
from selfee.chain import Verdict, detect_verdict, parse, render_prompt, render_target
from selfee.errors import ConfigError
from selfee.llm_config import RetryConfig
from selfee.records import make_instruction, read_jsonl, write_jsonl

GOLD_HINT = "Compare it with what the task expects"  # the offline critic's sign it saw gold


def instructions(tmp_path: Path, n: int = 24) -> tuple[Path, list[dict]]:
    rows = [
        make_instruction("gsm8k", f"What is {i} times 7?", "", f"#### {7 * i}")
        for i in range(n // 2)
    ]
    rows += [make_instruction("alpaca", f"Describe colour number {i}.") for i in range(n // 2 - 1)]
    rows.append(make_instruction("sharegpt", "Tell me a joke.", "", "Knock knock. Who is there?"))
    path = tmp_path / "instructions.jsonl"
    write_jsonl(path, rows)
    return path, rows


def config(teacher, path: Path, out: Path, **overrides) -> AugmentConfig:
    settings = {
        "input": path,
        "output": out,
        "base_url": teacher.base_url,
        "model": "offline-teacher",
        "workers": 2,
        "concurrency": 8,
        "max_iterations": 3,
        "progress_interval_s": 0.5,
        "retry": RetryConfig(max_retries=2, backoff_s=0.01, max_backoff_s=0.05, timeout_s=1),
        **overrides,
    }
    return AugmentConfig(**settings)


def chains(out: Path) -> list[dict]:
    return list(read_jsonl(out / "chains.jsonl"))


def test_chains_meet_the_contract(ray_session, start_teacher, tmp_path: Path, capsys) -> None:
    teacher = start_teacher(needed_fraction=0.5, later_needed_fraction=0.5, latency_ms=20)
    path, rows = instructions(tmp_path)
    summary = run_augment(config(teacher, path, tmp_path / "out"))
    check_manifest(tmp_path / "out" / "manifest.json", "augment")
    got = chains(tmp_path / "out")
    assert [c["id"] for c in got] == [r["id"] for r in rows]  # each input once, in order
    for chain, row in zip(got, rows, strict=True):
        assert chain["error"] is None and chain["output"] == row["output"]
        assert 1 <= chain["iteration"] == len(chain["outputs"]) <= 3
        verdicts = [detect_verdict(o["feedback"]) for o in chain["outputs"]]
        assert all(v is Verdict.NEEDED for v in verdicts[:-1])
        if chain["stop_reason"] == STOP_NOT_NEEDED:
            assert verdicts[-1] is Verdict.NOT_NEEDED
        else:
            assert chain["stop_reason"] == STOP_MAX_ITERATIONS and chain["iteration"] == 3
        saw_gold = [
            GOLD_HINT in o["feedback"]
            for o in chain["outputs"]
            if detect_verdict(o["feedback"]) is Verdict.NEEDED
        ]
        assert all(saw_gold) if row["dataset"] == "gsm8k" else not any(saw_gold)
        text = render_prompt(chain["instruction"]) + render_target(chain["outputs"])
        assert parse(text).steps == chain["outputs"]
    assert got[-1]["outputs"][0]["output"] == "Knock knock. Who is there?"  # ShareGPT's answer
    stats = httpx.get(f"{teacher.url}/stats").json()
    assert (
        stats["requests"]
        == sum(c["usage"]["requests"] for c in got)
        == summary["usage"]["requests"]
    )
    assert summary["iterations"] == {
        k: sum(1 for c in got if c["iteration"] == k) for k in {c["iteration"] for c in got}
    }
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["rows"] == len(rows) and saved["errors"] == 0
    printed = capsys.readouterr().out
    assert f"rows {len(rows)}/{len(rows)} (100%)" in printed and "ETA" in printed


def test_faults_lose_nothing_and_errors_can_be_retried(
    ray_session, start_teacher, tmp_path: Path
) -> None:
    flaky = start_teacher(fault_rate=0.25, timeout_fault_s=3, seed=7)
    path, rows = instructions(tmp_path, n=30)
    out = tmp_path / "out"
    first = run_augment(
        config(flaky, path, out, retry=RetryConfig(max_retries=1, backoff_s=0.01, timeout_s=1))
    )
    got = chains(out)
    assert [c["id"] for c in got] == [r["id"] for r in rows]
    failed = {c["id"] for c in got if c["error"]}
    assert failed and len(failed) < len(rows)  # with 25% faults and 1 retry, some rows fail
    assert first["errors"] == len(failed)
    assert set(first["errors_by_kind"]) <= {
        "InternalServerError",
        "RateLimitError",
        "APITimeoutError",
        "malformed response",
    }
    assert all(c["outputs"] and c["stop_reason"] != "error" for c in got if not c["error"])
    stats = httpx.get(f"{flaky.url}/stats").json()
    assert sum(stats["faults"].values()) > 0

    healthy = start_teacher()
    again = run_augment(config(healthy, path, out, retry_errors=True))
    retried = chains(out)
    assert [c["id"] for c in retried] == [r["id"] for r in rows]
    assert all(c["error"] is None for c in retried) and again["errors"] == 0
    unchanged = [c for c in got if c["id"] not in failed]
    assert unchanged == [c for c in retried if c["id"] not in failed]  # done rows untouched
    redone = [c for c in retried if c["id"] in failed]
    assert httpx.get(f"{healthy.url}/stats").json()["requests"] == sum(
        c["usage"]["requests"] for c in redone
    )


def test_a_damaged_journal_is_resumed_row_by_row(
    ray_session, start_teacher, tmp_path: Path
) -> None:
    """Rows that break the Chain contract, and a line torn inside a UTF-8 character, are
    skipped, counted and run again; nothing else is asked for twice."""
    teacher = start_teacher()
    path, rows = instructions(tmp_path, n=8)
    out = tmp_path / "out"
    run_augment(config(teacher, path, out))
    journal = out / "journal.jsonl"
    lines = journal.read_bytes().splitlines(keepends=True)
    first, second = json.loads(lines[0]), json.loads(lines[1])
    broken = [
        {"id": first["id"]},  # the id alone (a KeyError traceback before)
        {**second, "outputs": "finished"},
    ]  # wrong type: was trusted as finished
    journal.write_bytes(b"".join(lines[2:]) + b"".join(
        json.dumps(b).encode() + b"\n" for b in broken) + "{\"id\": \"日".encode()[:-1])  # fmt: skip
    asked_before = httpx.get(f"{teacher.url}/stats").json()["requests"]
    summary = run_augment(config(teacher, path, out))
    assert summary["run"]["journal_skipped"] == {"unreadable": 1, "invalid": 2}
    assert summary["run"]["rows_run"] == 2 and summary["complete"] == len(rows)
    got = chains(out)
    assert [c["id"] for c in got] == [r["id"] for r in rows]
    assert all(isinstance(c["outputs"], list) and c["outputs"] for c in got)
    redone = [c for c in got if c["id"] in {first["id"], second["id"]}]
    asked = httpx.get(f"{teacher.url}/stats").json()["requests"] - asked_before
    assert asked == sum(c["usage"]["requests"] for c in redone)


def test_long_inputs_fit_the_teachers_context(ray_session, start_teacher, tmp_path: Path) -> None:
    teacher = start_teacher(max_context=1200)
    rows = [
        make_instruction("alpaca", f"Summarise text {i}.", "lorem ipsum " * 1500) for i in range(4)
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    run_augment(
        config(teacher, tmp_path / "in.jsonl", tmp_path / "out", max_context=1200, max_tokens=300)
    )
    got = chains(tmp_path / "out")
    assert all(c["error"] is None and c["iteration_truncated"] for c in got)
    assert httpx.get(f"{teacher.url}/stats").json()["context_rejected"] == 0


def test_user_mistakes_are_clear_errors(tmp_path: Path, start_teacher) -> None:
    teacher = start_teacher()
    with pytest.raises(ConfigError, match="--input"):
        run_augment(AugmentConfig())
    with pytest.raises(ConfigError, match="does not exist"):
        run_augment(config(teacher, tmp_path / "missing.jsonl", tmp_path / "out"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "no instruction here"}\n')
    with pytest.raises(ConfigError, match="row 1 has no 'instruction'"):
        run_augment(config(teacher, bad, tmp_path / "out"))
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes('{"instruction": "Où est la gare?"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=rf"{latin1}:1 is not UTF-8 text \(byte 0xf9"):
        run_augment(config(teacher, latin1, tmp_path / "out"))
    with pytest.raises(ValueError, match="max_tokens"):
        AugmentConfig(max_tokens=4096, max_context=4096)
    with pytest.raises(ValueError, match="either a gold answer or the initial answer"):
        AugmentConfig(gold_datasets=["sharegpt"])
