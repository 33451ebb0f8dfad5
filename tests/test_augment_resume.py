"""`python -m jobs.augment` as a user runs it: Ctrl-C mid-run, re-run, exactly once; the API
key never shows up in outputs, console or Ray's logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from selfee.records import make_instruction, read_jsonl, write_jsonl

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-selfee-test-4f9a8b7c6d5e"


def augment_cmd(teacher, path: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "jobs.augment",
        "--input", str(path), "--output", str(out),
        "--base-url", teacher.base_url, "--model", "offline-teacher",
        "--api-key-env", "SELFEE_TEST_KEY",
        "--workers", "2", "--concurrency", "4", "--max-iterations", "3",
        "--progress-interval-s", "1", "--ray.num-cpus", "2",
    ]  # fmt: skip


LOGS = Path(os.environ.get("TMPDIR", "/tmp")) / f"selfee-test-logs-{os.getpid()}"


def env(key: str = KEY) -> dict[str, str]:
    """The job's environment; its run logs (selfee.console) go to LOGS, checked for the key."""
    return {**os.environ, "SELFEE_TEST_KEY": key, "PYTHONUNBUFFERED": "1",
            "SELFEE_LOG_DIR": str(LOGS)}  # fmt: skip


def ray_session_logs() -> Path:
    return Path("/tmp/ray/session_latest").resolve() / "logs"


def assert_key_absent(*places: Path | str) -> None:
    for place in places:
        if isinstance(place, str):
            assert KEY not in place
            continue
        files = [place] if place.is_file() else [p for p in place.rglob("*") if p.is_file()]
        for file in files:
            assert KEY.encode() not in file.read_bytes(), f"the API key leaked into {file}"


def test_ctrl_c_then_rerun_gives_every_row_exactly_once(
    start_teacher, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("SELFEE_TEACHER_KEY", KEY)
    teacher = start_teacher(
        latency_ms=150, needed_fraction=0.6, later_needed_fraction=0.3,
        api_key_env="SELFEE_TEACHER_KEY", fault_rate=0.1, fault_kinds=["500"],
    )  # fmt: skip
    rows = [make_instruction("alpaca", f"Explain idea {i}.") for i in range(60)]
    path, out = tmp_path / "in.jsonl", tmp_path / "out"
    write_jsonl(path, rows)

    first = subprocess.Popen(
        augment_cmd(teacher, path, out), cwd=REPO, env=env(), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    journal = out / "journal.jsonl"
    deadline = time.monotonic() + 120
    while not (journal.exists() and len(journal.read_text().splitlines()) >= 8):
        assert first.poll() is None, first.stdout.read()
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    console_1, _ = first.communicate(timeout=120)
    assert first.returncode != 0, console_1
    assert "interrupted" in console_1
    logs_1 = ray_session_logs()
    saved = {row["id"] for row in read_jsonl(journal)}
    assert 8 <= len(saved) < len(rows)
    requests_before = httpx.get(f"{teacher.url}/stats").json()["received"]

    second = subprocess.run(
        augment_cmd(teacher, path, out), cwd=REPO, env=env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resuming: {len(saved)} of {len(rows)} rows already done" in second.stdout
    final = list(read_jsonl(out / "chains.jsonl"))
    assert [c["id"] for c in final] == [r["id"] for r in rows]
    assert len(list(read_jsonl(journal))) == len(rows)  # compacted: one line per row
    redone = [c for c in final if c["id"] not in saved]
    received = httpx.get(f"{teacher.url}/stats").json()["received"] - requests_before
    assert received == sum(c["usage"]["requests"] for c in redone)  # nothing done twice

    assert_key_absent(out, console_1, second.stdout, second.stderr, logs_1, ray_session_logs())
    assert list(LOGS.glob("augment-*.log"))  # the runs' own logs exist, and hold no key
    assert_key_absent(LOGS)


def test_a_wrong_key_is_a_clear_error_that_never_shows_the_key(
    start_teacher, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("SELFEE_TEACHER_KEY", "sk-the-right-one-000000")
    teacher = start_teacher(api_key_env="SELFEE_TEACHER_KEY")
    path, out = tmp_path / "in.jsonl", tmp_path / "out"
    write_jsonl(path, [make_instruction("alpaca", "Say hi.")])
    done = subprocess.run(
        augment_cmd(teacher, path, out), cwd=REPO, env=env(), capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 1
    assert "rejected the API key (HTTP 401)" in done.stderr
    assert "Traceback" not in done.stderr
    assert_key_absent(done.stdout, done.stderr, out)
    assert httpx.get(f"{teacher.url}/stats").json()["requests"] == 0
