"""Batch inference throughput: 1 vs 2 model actors, one question at a time vs batches.

The tests' tiny SelFee model (trained here unless ``--model``), ``selfee infer`` on Ray Data
with ``min_revisions=1`` on the local Ray (2 CPUs, 1 CPU and 1 torch thread per actor).
Wall time covers the whole job: actor start-up, model loading, generation, the answer file.

    .venv/bin/python bench/infer_throughput.py [--questions 256] [--max-new-tokens 256]
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

import ray

from results import append_rows, machine
from selfee.infer.config import InferConfig
from selfee.infer.job import run_infer
from tiny_model import QUESTIONS, add_model_option, model_dir

RUNS = [(1, 1), (1, 8), (2, 8)]  # (actors, batch size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_option(parser)
    parser.add_argument("--questions", type=int, default=256)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = model_dir(args.model, work, args.size)
        questions = work / "question.jsonl"
        texts = [QUESTIONS[i % len(QUESTIONS)] + f" ({i})" for i in range(args.questions)]
        questions.write_text(
            "".join(json.dumps({"question_id": i, "text": t}) + "\n" for i, t in enumerate(texts))
        )
        for actors, batch in RUNS:
            cfg = InferConfig(
                model=str(model), questions=questions, output=work / f"a{actors}-{batch}.jsonl",
                min_revisions=1, max_new_tokens=args.max_new_tokens, concurrency=actors,
                batch_size=batch, cpus_per_actor=1, overwrite=True, progress_interval_s=60,
            )  # fmt: skip
            started = time.perf_counter()
            summary = run_infer(cfg)
            seconds = time.perf_counter() - started
            rate = summary["tokens"] / seconds
            print(
                f"{actors} actors, batch {batch}: {seconds:.1f} s, {rate:,.0f} tokens/s", flush=True
            )
            rows.append(
                f"| {datetime.date.today()} | {machine()} | {args.questions} | {actors} | {batch} | "
                f"{summary['tokens']:,} | {seconds:.1f} s | **{rate:,.0f}** | "
                f"{args.questions / seconds:.2f} |"
            )
    ray.shutdown()
    append_rows(
        "\n## Batch inference throughput (`bench/infer_throughput.py`)\n\n"
        "| date | machine | questions | actors | batch size | tokens | wall (whole job) | "
        "tokens/s | questions/s |\n|---|---|---|---|---|---|---|---|---|\n",
        rows,
    )


if __name__ == "__main__":
    main()
