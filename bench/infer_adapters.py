"""Batch inference for several fine-tunes of one base (``selfee infer --adapters``): one run
with three LoRA adapters side by side against three runs, one per adapter.

A LLaMA of 36M built from a config (random weights that never end early) and three
adapters of rank 16 on every linear layer; ``--questions`` questions, ``--tokens`` greedy
tokens each, every question to every adapter. On each engine, end to end on the shared
local Ray (model actors started, models loaded, answers written):

- one run: the first adapter as the model, the two others beside it (one base in memory,
  batches mixing the three);
- three runs: each adapter as the model alone (the HF engine merges it at load; vLLM
  applies it on its base: one engine start per run).

Both must write the same answers (compared text for text).

    .venv/bin/python bench/infer_adapters.py [--questions 12] [--tokens 64] [--engines hf,vllm]
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

from adapters_side_by_side import NAMES, RANK, SIZES, write_adapters
from engine_speed import build_model

from results import append_rows, machine
from selfee.infer.config import InferConfig
from selfee.infer.job import run_infer
from selfee.records import read_jsonl

SIZE = "36M"


def timed_runs(configs: list[InferConfig]) -> float:
    started = time.monotonic()
    for cfg in configs:
        run_infer(cfg)
    return time.monotonic() - started


def engine_rows(engine: str, made: dict, questions: Path, tokens: int, out: Path) -> list[str]:
    settings = {"engine": engine, "questions": questions, "max_new_tokens": tokens,
                "batch_size": 64, "concurrency": 1, "cpus_per_actor": 2,
                "progress_interval_s": 60, "vllm": {"kv_cache_gib": 0.5}}  # fmt: skip
    adapters = {name: made[name][0] for name in NAMES}
    first, *beside = NAMES
    one = InferConfig(model=str(adapters[first]), model_id=first, output=out / engine / "one" /
                      "{model}.jsonl", adapters={n: adapters[n] for n in beside}, **settings)  # fmt: skip
    three = [InferConfig(model=str(adapters[n]), model_id=n, output=out / engine / "three" /
                         f"{n}.jsonl", **settings) for n in NAMES]  # fmt: skip
    seconds = {"1 run, 3 adapters side by side": timed_runs([one]),
               "3 runs, 1 adapter each": timed_runs(three)}  # fmt: skip
    texts = {form: {n: [a["whole_generation"] for a in read_jsonl(out / engine / form / f"{n}.jsonl")]
                    for n in NAMES} for form in ("one", "three")}  # fmt: skip
    equal = sum(
        a == b for n in NAMES for a, b in zip(texts["one"][n], texts["three"][n], strict=True)
    )
    total = sum(len(texts["three"][n]) for n in NAMES)
    count = len(texts["three"][NAMES[0]])
    rows = []
    for form, s in seconds.items():
        print(f"{engine} {form}: {s:.1f} s ({equal}/{total} answers equal)", flush=True)
        rows.append(f"| {datetime.date.today()} | {machine()} | LLaMA {SIZE} + 3 LoRA r{RANK} | "
                    f"{engine} | {count} questions x 3 adapters, {tokens} tokens | {form} | "
                    f"**{s:.1f}** | {equal}/{total} |")  # fmt: skip
    return rows


def main() -> None:
    import ray

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=12, help="questions, each to 3 adapters")
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens per answer")
    parser.add_argument("--engines", default="hf,vllm", help="comma-separated: hf, vllm")
    args = parser.parse_args()
    rows = []
    ray.init(num_cpus=2, include_dashboard=False)  # shared by every run, as in a long session
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            hidden, layers, mlp = SIZES[SIZE]
            base = build_model(folder / "base", hidden=hidden, layers=layers, mlp=mlp)
            made = write_adapters(base, folder)
            questions = folder / "questions.jsonl"
            questions.write_text("".join(
                json.dumps({"question_id": i, "text": f"Question {i}: what is {i} plus {i + 1}?"})
                + "\n" for i in range(args.questions)
            ))  # fmt: skip
            for engine in args.engines.split(","):
                rows += engine_rows(engine, made, questions, args.tokens, folder / "answers")
    finally:
        ray.shutdown()
    append_rows(
        "\n## Batch inference for several adapters on one base (`bench/infer_adapters.py`)\n\n"
        "End to end on a shared local Ray (actors started, models loaded, answers written); "
        "answers of the two forms compared text for text.\n\n| date | machine | model | engine | "
        "work | form | seconds | answers equal |\n|---|---|---|---|---|---|---|---|\n",
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
