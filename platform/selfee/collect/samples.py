"""Sample source files in each SelFee source's public format, written for this project.

The quickstart collects from these, so a new user sees the collect stage work without
downloading anything. Rows come from small templates (objects, numbers, tasks), so a few
hundred per source are distinct instructions; they are seeded, the same on every machine.
Not real data: every file says so in a row or a field where its format allows.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

THINGS = ["apple", "bicycle", "garden", "library", "river", "kettle", "violin", "harbor",
          "lantern", "meadow", "notebook", "compass", "orchard", "pottery", "satellite"]  # fmt: skip
TASKS = ["Describe", "Explain the purpose of", "List three facts about", "Write a haiku about",
         "Give two tips for caring for", "Compare a {a} and a", "Summarise the history of"]  # fmt: skip
NAMES = ["Ana", "Ben", "Chen", "Dara", "Eli", "Fatima", "Goran", "Hana", "Ivo", "Jun"]
CODE_TASKS = [
    ("reverse the list `{v}` in place", "{v}.reverse()"),
    ("sort the list `{v}` in descending order", "{v}.sort(reverse=True)"),
    ("count the items of `{v}` that are above {n}", "sum(1 for x in {v} if x > {n})"),
    ("remove duplicates from `{v}` keeping order", "list(dict.fromkeys({v}))"),
    ("get the {n} largest values of `{v}`", "sorted({v}, reverse=True)[:{n}]"),
]
SAMPLE_NOTE = "selfee sample data (templated, not a real dataset)"


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def write_sample_sources(root: Path, per_source: int = 200, seed: int = 0) -> dict[str, Path]:
    """``per_source`` rows in each of the ten formats under ``root``; returns name → path."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    n = range(per_source)
    paths: dict[str, Path] = {}

    def thing() -> str:
        return rng.choice(THINGS)

    alpaca = []
    for i in n:
        task = rng.choice(TASKS).replace("{a}", thing())
        alpaca.append({"instruction": f"{task} {thing()} number {i}.", "input": "",
                       "output": "", "note": SAMPLE_NOTE})  # fmt: skip
    paths["alpaca"] = root / "alpaca_data.json"
    paths["alpaca"].write_text(json.dumps(alpaca, indent=1))

    aqua = []
    for i in n:
        a, b = rng.randint(2, 40), rng.randint(2, 40)
        options = sorted({a + b, a + b + 1, a + b - 1, a + b + 2, a * b})
        letters = "ABCDE"[: len(options)]
        correct = letters[options.index(a + b)]
        aqua.append({"question": f"A crate holds {a} jars and another holds {b} (case {i}). "
                                 "How many jars are there in all?",
                     "options": [f"{letter}){o}" for letter, o in zip(letters, options, strict=True)],
                     "rationale": f"{a} + {b} = {a + b}.", "correct": correct})  # fmt: skip
    paths["aqua"] = _jsonl(root / "aqua_train.jsonl", aqua)

    gsm8k = []
    for i in n:
        who, per, days = rng.choice(NAMES), rng.randint(2, 30), rng.randint(2, 12)
        gsm8k.append({"question": f"{who} reads {per} pages a day for {days} days (book {i}). "
                                  "How many pages does that make?",
                      "answer": f"{per} * {days} = <<{per}*{days}={per * days}>>{per * days}\n"
                                f"#### {per * days}"})  # fmt: skip
    paths["gsm8k"] = _jsonl(root / "gsm8k_train.jsonl", gsm8k)

    math_dir = root / "MATH" / "train" / "algebra"
    math_dir.mkdir(parents=True, exist_ok=True)
    for i in n:
        a, x = rng.randint(2, 9), rng.randint(1, 20)
        (math_dir / f"{i}.json").write_text(json.dumps({
            "problem": f"Solve for $x$: ${a}x + {i} = {a * x + i}$.", "level": "Level 1",
            "type": "Algebra", "solution": f"$x = \\\\boxed{{{x}}}$"}))  # fmt: skip
    paths["math"] = root / "MATH"

    conala = []
    for i in n:
        intent, snippet = rng.choice(CODE_TASKS)
        v, k = f"values_{i}", rng.randint(2, 5)
        conala.append({"intent": intent.format(v=v, n=k).replace("`", ""),
                       "rewritten_intent": intent.format(v=v, n=k),
                       "snippet": snippet.format(v=v, n=k), "question_id": i})  # fmt: skip
    paths["conala"] = root / "conala-train.json"
    paths["conala"].write_text(json.dumps(conala))

    mbpp = []
    for i in n:
        k = rng.randint(2, 9)
        mbpp.append({"task_id": i, "text": f"Write a function `times_{i}` that multiplies a number by {k}.",
                     "code": f"def times_{i}(x):\n    return x * {k}",
                     "test_list": [f"assert times_{i}(3) == {3 * k}"]})  # fmt: skip
    paths["mbpp"] = _jsonl(root / "mbpp.jsonl", mbpp)

    contests = []
    for i in n:
        k = rng.randint(2, 9)
        contests.append({"name": f"{i}. Scale", "description": f"Read an integer n and print n * {k} (problem {i}).",
                         "public_tests": {"input": ["3\n"], "output": [f"{3 * k}\n"]},
                         "solutions": {"language": [3, 2],
                                       "solution": [f"print(int(input()) * {k})",
                                                    "#include <cstdio>\nint main(){long n;scanf(\"%ld\",&n);"
                                                    f"printf(\"%ld\",n*{k});}}"]}})  # fmt: skip
    paths["code_contests"] = root / "code_contests_train.parquet"
    pq.write_table(pa.Table.from_pylist(contests), paths["code_contests"])

    drrepair = []
    for i in n:
        k = rng.randint(1, 99)
        drrepair.append({"broken": f"int main() {{ int x = {k} return x; }}",
                         "error": f"error: expected ';' before 'return' (program {i})",
                         "fixed": f"int main() {{ int x = {k}; return x; }}", "language": "C"})  # fmt: skip
    paths["drrepair"] = _jsonl(root / "drrepair.jsonl", drrepair)

    flan = []
    for i in n:
        task = ["sentiment", "translation", "paraphrase", "nli"][i % 4]
        text = {
            "sentiment": (f"Is this review of the {thing()} positive? 'It was lovely, visit {i}.'", "yes"),
            "translation": (f"Translate to French: 'the {thing()} number {i}'", f"le numéro {i}"),
            "paraphrase": (f"Paraphrase: 'The {thing()} opened at {i % 12 + 1} o'clock.'",
                           f"It opened at {i % 12 + 1}."),
            "nli": (f"Premise: {rng.choice(NAMES)} owns {i} books. Hypothesis: they own books. "
                    "Entailed?", "yes"),
        }[task]  # fmt: skip
        flan.append({"inputs": text[0], "targets": text[1], "task": task})
    paths["flan"] = _jsonl(root / "flan.jsonl", flan)

    sharegpt = []
    for i in n:
        topic = thing()
        sharegpt.append({"id": f"sample-{i}", "conversations": [
            {"from": "human", "value": f"How can I take good photos of a {topic} at dusk (try {i})?"},
            {"from": "gpt", "value": f"<p>Use a tripod and a slow shutter; frame the {topic} "
                                     "against the brightest part of the sky.</p>"}]})  # fmt: skip
    paths["sharegpt"] = root / "sharegpt_sample.json"
    paths["sharegpt"].write_text(json.dumps(sharegpt))
    return paths
