"""Which judgments a pair of answer files needs, and the review rows they become.

Each judgment is keyed by what decides it (judge model, the exact prompt: question, both
answers, their order, the template), so the cache can answer it again whatever the run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from selfee.errors import ConfigError
from selfee.judge import report
from selfee.judge.config import JudgeConfig
from selfee.judge.templates import load_upstream, our_reviewers, reviewer_for
from selfee.records import question_with_input, read_questions

UNSCORED = [-1.0, -1.0]  # what FastChat's review files hold for a failed judgment


def judgment_key(model: str, messages: list[dict[str, str]]) -> str:
    blob = json.dumps([model, messages], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def model_name(path: Path) -> str:
    return Path(path).name.removesuffix(".jsonl")


def _by_question(path: Path, what: str) -> dict[Any, dict[str, Any]]:
    return {row["question_id"]: row for row in read_questions(path, what)}


def model_names(cfg: JudgeConfig) -> tuple[str, str]:
    """The two models, named by their answer files (the review files carry the names)."""
    cfg.require()
    name_a, name_b = (model_name(p) for p in cfg.answers)
    if name_a == name_b or report.VS in name_a or report.VS in name_b:
        raise ConfigError(
            f"answer files need two different names without '{report.VS}' (they name the "
            f"models in the review files): got {name_a}, {name_b}"
        )
    return name_a, name_b


def plan(cfg: JudgeConfig, model: str, names: tuple[str, str]) -> tuple[list[dict[str, Any]], int]:
    """(judgments to make, in question order and both orders; questions skipped);
    ``names``: ``model_names(cfg)``."""
    name_a, name_b = names
    questions = _by_question(cfg.questions, "questions")
    answers = {name_a: _by_question(cfg.answers[0], "answers"),
               name_b: _by_question(cfg.answers[1], "answers")}  # fmt: skip
    if cfg.prompts is not None and cfg.reviewers is not None:
        reviewers = load_upstream(cfg.prompts, cfg.reviewers)
    else:
        reviewers = our_reviewers()
    tasks, skipped = [], 0
    for qid, question in questions.items():
        if any(qid not in answers[name] for name in (name_a, name_b)):
            skipped += 1
            continue
        category = str(question.get("category", ""))
        reviewer = reviewer_for(category, reviewers)
        for first, second in ((name_a, name_b), (name_b, name_a)):
            one, two = answers[first][qid], answers[second][qid]
            system, user = (m["content"] for m in reviewer.template.messages(
                question_with_input(question), one["text"], two["text"]))  # fmt: skip
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            tasks.append({
                "id": judgment_key(model, messages),
                "question_id": qid,
                "category": category,
                "order": f"{first}{report.VS}{second}",
                "answer1_id": str(one.get("answer_id") or f"{first}:{qid}"),
                "answer2_id": str(two.get("answer_id") or f"{second}:{qid}"),
                "answer1_words": len(one["text"].split()),
                "answer2_words": len(two["text"].split()),
                "reviewer_id": reviewer.reviewer_id,
                "system": system,
                "user": user,
                "temperature": reviewer.temperature if reviewer.temperature is not None else cfg.temperature,
                "max_tokens": reviewer.max_tokens or cfg.max_tokens,
            })  # fmt: skip
    return tasks, skipped


def review_row(task: dict[str, Any], result: dict[str, Any], model: str, cached: bool) -> dict:
    parsed = result.get("score") is not None
    return {
        "review_id": task["id"][:22],
        "question_id": task["question_id"],
        "answer1_id": task["answer1_id"],
        "answer2_id": task["answer2_id"],
        "reviewer_id": task["reviewer_id"],
        "text": result.get("text", ""),
        "score": result["score"] if parsed else UNSCORED,
        "metadata": {
            "category": task["category"],
            "judge_model": model,
            "parsed": parsed,
            "error": result.get("error"),
            "cached": cached,
            "answer1_words": task["answer1_words"],
            "answer2_words": task["answer2_words"],
        },
    }
