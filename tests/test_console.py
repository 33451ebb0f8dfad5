"""What a user sees of a stage: its own lines on the console, every library's output in the
run's log file (named at the start and in any error); --verbose shows it all."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from selfee.console import OURS_RE, _Console
from selfee.records import read_jsonl, write_jsonl

REPO = Path(__file__).resolve().parents[1]
ANSWERS = "answer/selfee_13b_enforce_3_revisions.jsonl"
NOISE = ("INFO", "WARNING", "streaming_executor", "Token authentication", "core_worker",
         "FutureWarning", "DeprecationWarning")  # fmt: skip


def eval_run(reference: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    rows = [{**q, "gold": "39"} for q in read_jsonl(reference / "question.jsonl")
            if q["question_id"] == 68]  # fmt: skip
    write_jsonl(tmp_path / "q.jsonl", rows)
    env = {**os.environ, "SELFEE_LOG_DIR": str(tmp_path / "logs")}
    return subprocess.run(
        [sys.executable, "-m", "selfee.cli", "eval", "--task", "gsm8k", "--questions",
         str(tmp_path / "q.jsonl"), "--answers", str(reference / ANSWERS), "--output",
         str(tmp_path / "out"), "--ray.num-cpus", "1", *extra],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )  # fmt: skip


def test_the_console_shows_our_lines_and_the_log_holds_the_rest(
    reference: Path, tmp_path: Path
) -> None:
    done = eval_run(reference, tmp_path)
    assert done.returncode == 0, done.stderr
    console = done.stdout + done.stderr
    assert not [line for line in console.splitlines() if any(n in line for n in NOISE)]
    first, *rest = [line for line in done.stderr.splitlines() if line.strip()]
    assert first.startswith("selfee eval: log of this run: ")
    log = Path(first.removeprefix("selfee eval: log of this run: ").split(" (")[0])
    assert log.parent == tmp_path / "logs" and log.is_file()
    assert all(line.startswith(("[eval] ", "Ray dashboard")) for line in rest), rest
    assert any(line.startswith("[eval] scoring: 100%|") for line in rest)  # the progress bar
    assert "[eval] scored " not in console  # its periodic line: in the log only
    assert "answer      100.0%" in done.stdout  # the report table, on stdout
    text = log.read_text()
    assert "streaming_executor" in text  # Ray Data's lines went to the log
    assert "[eval] scored " in text and "answer      100.0%" in text  # ours too


def test_an_error_is_one_line_naming_the_log(reference: Path, tmp_path: Path) -> None:
    done = eval_run(reference, tmp_path, "--answers", str(tmp_path / "missing.jsonl"))
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("selfee eval: log of this run: ")
    errors = [line for line in lines if line.startswith("selfee eval: error: ")]
    assert len(errors) == 1 and "missing.jsonl does not exist" in errors[0]
    assert "--verbose shows the traceback" in errors[0] and "; log: " in errors[0]
    assert "Traceback" not in done.stderr + done.stdout


def test_verbose_leaves_everything_on_the_console(reference: Path, tmp_path: Path) -> None:
    done = eval_run(reference, tmp_path, "--verbose")
    assert done.returncode == 0, done.stderr
    assert "log of this run" not in done.stderr and not (tmp_path / "logs").exists()
    assert "streaming_executor" in done.stdout + done.stderr


def test_our_lines_are_recognized_also_as_ray_forwards_them() -> None:
    forwarded = "\x1b[36m(RayTrainWorker pid=2874)\x1b[0m [train] step 10/200 · loss 6.2"
    assert OURS_RE.match(forwarded).group(1) == "[train] step 10/200 · loss 6.2"  # type: ignore[union-attr]
    assert OURS_RE.match("[infer] questions 3/16").group(1) == "[infer] questions 3/16"  # type: ignore[union-attr]
    for other in ("2026-11-22 INFO worker.py -- [infer] not ours", "[ray] x", "(pid=1) step 3"):
        assert OURS_RE.match(other) is None


def test_step_lines_are_drawn_as_the_stage_progress_bar() -> None:
    """Training reports from Ray workers as "[train] step k/N · ..." lines: the console draws
    them as one bar (what the line says after the step, as its postfix), and a line printed
    meanwhile comes out whole, not in the middle of the bar."""
    out, err = io.StringIO(), io.StringIO()
    console = _Console(out, err)
    for step in (10, 20):
        console.line(f"[train] step {step}/40 · loss 6.{step} · 900 tokens/s", err)
    drawn = err.getvalue()
    assert "[train] steps:  50%|" in drawn and "20/40" in drawn and "loss 6.20 · 900" in drawn
    assert "[train] step 10/40" not in drawn  # a bar, not the lines
    console.line("[train] saved a checkpoint", err)
    assert "\r[train] saved a checkpoint\n" in err.getvalue()  # the bar cleared first
    console.line("[train] step 40/40 · loss 5.01", err)
    assert "[train] steps: 100%|" in err.getvalue() and "loss 5.01" in err.getvalue()
    assert not console.step_bars  # closed when done
    console.line("[train] step 10/40 · loss 7.0", err)  # a new run: a new bar
    assert console.step_bars["train"].n == 10


def test_ctrl_c_delivered_to_another_thread_still_stops_a_waiting_command() -> None:
    """`selfee serve` and `quickstart --serve` wait for Ctrl-C on the main thread while Ray's
    threads run; the kernel may hand SIGINT to any thread, and it must still stop them."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import signal, threading, time
        from selfee.console import wait_for_ctrl_c
        ready = threading.Event()
        def other():
            ready.set()
            time.sleep(30)
        thread = threading.Thread(target=other, daemon=True)
        thread.start()
        ready.wait()
        threading.Timer(0.5, signal.pthread_kill, (thread.ident, signal.SIGINT)).start()
        try:
            wait_for_ctrl_c()
        except KeyboardInterrupt:
            print("stopped")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=20)  # fmt: skip
    assert done.stdout.strip() == "stopped", done.stderr
