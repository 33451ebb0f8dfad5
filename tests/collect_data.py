"""Small files in each SelFee source's public format, written for the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_sources(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    paths["alpaca"] = root / "alpaca_data.json"
    paths["alpaca"].write_text(json.dumps([
        {"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat well."},
        {"instruction": "Translate to French.", "input": "Good night", "output": "Bonne nuit"},
        {"instruction": "give three tips for staying healthy!", "input": "", "output": "dup"},
    ], indent=2))  # fmt: skip
    paths["aqua"] = jsonl(root / "aqua.jsonl", [
        {"question": "If x + 5 = 12, what is 2x?", "options": ["A)10", "B)12", "C)14", "D)16"],
         "rationale": "x = 7, so 2x = 14.", "correct": "C"},
    ])  # fmt: skip
    paths["gsm8k"] = jsonl(root / "gsm8k_train.jsonl", [
        {"question": "Tom reads 15 pages a day. How many days for 120 pages?",
         "answer": "120 / 15 = <<120/15=8>>8\n#### 8"},
        {"question": "A shop sells pencils 3 for $1. What do 12 cost?", "answer": "12/3 = 4\n#### 4"},
    ])  # fmt: skip
    math_dir = root / "MATH" / "train" / "algebra"
    math_dir.mkdir(parents=True)
    (math_dir / "1.json").write_text(json.dumps(
        {"problem": "Solve $x^2 = 4$ for $x > 0$.", "level": "Level 1", "type": "Algebra",
         "solution": "$x = \\boxed{2}$"}, indent=4))  # fmt: skip
    (math_dir / "2.json").write_text(json.dumps(
        {"problem": "What is $3 \\cdot 4$?", "level": "Level 1", "type": "Algebra",
         "solution": "$\\boxed{12}$"}, indent=4))  # fmt: skip
    paths["math"] = root / "MATH"
    paths["conala"] = root / "conala-train.json"
    paths["conala"].write_text(json.dumps([
        {"intent": "How to reverse a list?", "rewritten_intent": "reverse list `items` in place",
         "snippet": "items.reverse()", "question_id": 1},
        {"intent": "sort dict by value", "rewritten_intent": None, "snippet": "sorted(d, key=d.get)",
         "question_id": 2},
    ]))  # fmt: skip
    paths["mbpp"] = jsonl(root / "mbpp.jsonl", [
        {"task_id": 1, "text": "Write a function to find the largest of three numbers.",
         "code": "def largest(a, b, c):\n    return max(a, b, c)",
         "test_list": ["assert largest(1, 2, 3) == 3"]},
    ])  # fmt: skip
    paths["code_contests"] = root / "code_contests.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"name": "A. Sum", "description": "Read two integers and print their sum.",
         "solutions": {"language": [2, 3], "solution": ["int main(){}", "print(sum(map(int, input().split())))"]}},
        {"name": "B. None", "description": "No solutions here.",
         "solutions": {"language": [], "solution": []}},
    ]), paths["code_contests"])  # fmt: skip
    paths["drrepair"] = jsonl(root / "drrepair.jsonl", [
        {"broken": "int main() { return 0 }", "error": "error: expected ';' before '}' token",
         "fixed": "int main() { return 0; }", "language": "C"},
    ])  # fmt: skip
    paths["flan"] = jsonl(root / "flan.jsonl", [
        *[{"inputs": f"Is review {i} positive? It was great.", "targets": "yes", "task": "sentiment"}
          for i in range(15)],
        *[{"inputs": f"Repair program {i}", "targets": "fixed", "task": "program_repair_task"}
          for i in range(3)],
        {"inputs": "Translate 'cat' to German.", "targets": "Katze", "task": "translation"},
    ])  # fmt: skip
    paths["sharegpt"] = root / "sharegpt.json"
    paths["sharegpt"].write_text(json.dumps([
        {"id": "a", "conversations": [
            {"from": "human", "value": "How do I politely decline a meeting invitation?"},
            {"from": "gpt", "value": "<div class=\"markdown prose\"><p>Thank them and say you "
             "cannot attend.</p><ol><li>Be brief.</li><li>Offer another time.</li></ol>"
             "<pre><code>Dear Sam, I can't make it.</code></pre></div>"},
            {"from": "human", "value": "Thanks!"}, {"from": "gpt", "value": "You're welcome."}]},
        {"id": "b", "conversations": [
            {"from": "human", "value": "Comment puis-je refuser poliment une invitation à une réunion ?"},
            {"from": "gpt", "value": "Remerciez la personne et expliquez que vous ne pouvez pas venir."}]},
        {"id": "c", "conversations": [
            {"from": "human", "value": "ok thanks"},
            {"from": "gpt", "value": "Is there anything else I can help you with?"}]},
        {"id": "d", "conversations": [
            {"from": "human", "value": "Write a short poem about the sea."},
            {"from": "gpt", "value": "Waves roll in and out, the tide keeps time with the moon."}]},
        {"id": "e", "conversations": [{"from": "human", "value": "Explain recursion simply."}]},
        {"id": "f", "conversations": [
            {"from": "human", "value": "how do I politely decline a meeting invitation"},
            {"from": "gpt", "value": "Say no kindly and suggest another time."}]},
    ]))  # fmt: skip
    return paths
