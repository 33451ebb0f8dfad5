"""Collection throughput on a synthetic ShareGPT-format file (rows per second).

    .venv/bin/python bench/collect_sharegpt.py --rows 200000

Writes the file (HTML answers, a mix of English and other languages, statements and
questions, duplicates), runs the real collect job on embedded Ray and appends the figures to
bench/RESULTS.md with the machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import tempfile
import time
from pathlib import Path

from results import append_rows, machine
from selfee.collect.config import CollectConfig
from selfee.collect.job import run_collect

QUESTIONS = [
    "How do I {}?",
    "What is the best way to {}?",
    "Can you explain how to {}?",
    "Write a short guide to {}.",
    "Explain why people {}.",
    "I finished my work to {} today.",
]
TOPICS = [
    "bake bread",
    "learn a language",
    "fix a flat tyre",
    "sort a list in Python",
    "write a cover letter",
    "plan a trip",
    "train a small model",
    "save money",
]
FOREIGN = ["Wie kann ich {} lernen und verbessern?", "Comment puis-je {} rapidement et bien ?"]


def synthetic_conversation(i: int, rng: random.Random) -> dict:
    topic = f"{rng.choice(TOPICS)} (case {i % 50000})"
    template = rng.choice(FOREIGN) if rng.random() < 0.1 else rng.choice(QUESTIONS)
    answer = (f"<div class=\"markdown prose\"><p>Here is how to {topic}.</p><ol>"
              + "".join(f"<li>Step {k}: think about {topic} carefully.</li>" for k in range(4))
              + "</ol><pre><code>print('done')</code></pre></div>")  # fmt: skip
    return {"id": str(i), "conversations": [
        {"from": "human", "value": template.format(topic)}, {"from": "gpt", "value": answer}]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--results", type=Path, default=Path(__file__).with_name("RESULTS.md"))
    args = parser.parse_args()
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sharegpt.json"
        path.write_text(json.dumps([synthetic_conversation(i, rng) for i in range(args.rows)]))
        size_mb = path.stat().st_size / 1e6
        cfg = CollectConfig.model_validate(
            {"sources": [f"sharegpt={path}"], "output": f"{tmp}/out"}
        )
        started = time.perf_counter()
        summary = run_collect(cfg)
        seconds = time.perf_counter() - started
    rate = args.rows / seconds
    line = (f"| {datetime.date.today()} | {machine()} | "
            f"{args.rows:,} rows ({size_mb:.0f} MB) | {summary['rows_out']:,} kept | "
            f"{seconds:.1f} s | **{rate:,.0f} rows/s** |")  # fmt: skip
    print(line)
    section = ("\n## Collection: synthetic ShareGPT (`bench/collect_sharegpt.py`)\n\n"
               "Embedded Ray, whole job (read, HTML to text, language id, filters, dedup, "
               "Parquet write).\n\n| date | machine | input | output | time | throughput |\n"
               "|---|---|---|---|---|---|\n")  # fmt: skip
    append_rows(section, [line], args.results)


if __name__ == "__main__":
    main()
