"""`selfee eval` speed: sandboxed programs per second, and 1,000 scripted generations scored.

    .venv/bin/python bench/eval_speed.py                 # 200 programs, 1,000 generations
    .venv/bin/python bench/eval_speed.py --programs 400 --generations 2000
    .venv/bin/python bench/eval_speed.py --plot docs/eval_example.png   # the README's plot

Part 1 runs MBPP-style programs (a function and three asserts; a quarter of them wrong)
through the sandbox: one after another in this process, then fanned out as Ray tasks on
every core (what ``selfee eval --task code`` does). Part 2 writes 1,000 scripted SelFee
chains (answer + 3 revisions each, GSM8K-style numbers, correctness known per turn) and
times ``selfee eval --answers`` end to end on embedded Ray: reading, the Ray Data fan-out,
the journal, the bootstrap intervals and the report. Figures go to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
import tempfile
import time
from pathlib import Path

import ray

from results import append_rows, machine
from selfee.chain import feedback_header, render_prompt, revision_header
from selfee.eval.config import EvalConfig
from selfee.eval.job import run_eval
from selfee.eval.sandbox import CodeTests, run_program
from selfee.records import write_jsonl

TESTS = CodeTests(asserts=("assert f(2) == 4", "assert f(3) == 9", "assert f(-1) == 1"))


def program(i: int) -> str:
    body = "x * x" if i % 4 else "x + x"  # every fourth is wrong
    return f"def f(x):\n    # program {i}\n    return {body}\n"


@ray.remote(num_cpus=1)
def run_remote(code: str) -> bool:
    return run_program(code, TESTS).passed


def bench_sandbox(n: int) -> list[str]:
    started = time.perf_counter()
    passed = sum(run_program(program(i), TESTS).passed for i in range(n))
    serial = n / (time.perf_counter() - started)
    assert passed == n - (n + 3) // 4
    started = time.perf_counter()
    remote = sum(ray.get([run_remote.remote(program(i)) for i in range(n)]))
    fanned = n / (time.perf_counter() - started)
    assert remote == passed
    print(f"sandbox: {serial:.1f} programs/s in one process, {fanned:.1f}/s as Ray tasks")
    return [f"| sandboxed programs, one process | {n} | {serial:.1f} programs/s |",
            f"| sandboxed programs, Ray tasks ({os.cpu_count()} cores) | {n} | "
            f"{fanned:.1f} programs/s |"]  # fmt: skip


def scripted_chains(n: int, folder: Path) -> tuple[Path, Path, list[float]]:
    rng = random.Random(0)
    questions, answers, right = [], [], [0] * 4
    for i in range(n):
        gold = rng.randint(10, 999)
        questions.append({"question_id": i, "text": f"Question {i}?", "gold": f"#### {gold}"})
        correct = [rng.random() < p for p in (0.5, 0.6, 0.65, 0.7)]
        text = render_prompt(f"Question {i}?")
        for k, ok in enumerate(correct):
            right[k] += ok
            text += (
                revision_header(k) if k else ""
            ) + f"So the answer is {gold if ok else gold + 1}."
            text += feedback_header(k + 1) + ("Revision is not needed." if k == 3 else
                                             "Revision is needed.")  # fmt: skip
        answers.append({"question_id": i, "text": "", "whole_generation": text,
                        "metadata": {"tokens": 120}})  # fmt: skip
    write_jsonl(folder / "q.jsonl", questions)
    write_jsonl(folder / "a.jsonl", answers)
    return folder / "q.jsonl", folder / "a.jsonl", [r / n for r in right]


def bench_scoring(n: int, plot: Path | None) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        questions, answers, truth = scripted_chains(n, Path(tmp))
        cfg = EvalConfig(task="gsm8k", questions=questions, answers=answers, revisions=3,
                         output=Path(tmp) / "out", plot=plot or Path(tmp) / "eval.png")  # fmt: skip
        started = time.perf_counter()
        summary = run_eval(cfg)
        first = time.perf_counter() - started
        started = time.perf_counter()
        run_eval(cfg)  # everything from the journal
        again = time.perf_counter() - started
    got = [t["accuracy"] for t in summary["turns"]]
    assert got == [round(t, 4) for t in truth], (got, truth)
    print(f"eval of {n} scripted generations: {first:.1f} s, re-run {again:.1f} s")
    return [f"| `selfee eval --answers`, {n} generations × 4 turns (embedded Ray) | {n} | "
            f"{first:.1f} s ({n / first:.0f} generations/s); re-run from the journal "
            f"{again:.1f} s |"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--generations", type=int, default=1000)
    parser.add_argument("--plot", type=Path, help="keep the scripted run's plot here")
    args = parser.parse_args()
    ray.init(include_dashboard=False)
    rows = bench_sandbox(args.programs) + bench_scoring(args.generations, args.plot)
    ray.shutdown()
    header = [f"\n{machine()}, {datetime.date.today()}:\n",
              "| what | n | result |", "|---|---|---|"]  # fmt: skip
    append_rows("\n## Eval: sandboxed programs and per-turn scoring\n", header + rows)


if __name__ == "__main__":
    main()
