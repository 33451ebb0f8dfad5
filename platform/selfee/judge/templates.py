"""Which judge prompt a question gets: ours per category, or the upstream files, exactly.

A question's category routes it (``coding`` and ``math`` have their own judges; everything
else, and any category a set of reviewers lacks, goes to ``general``). The upstream setting is
reproduced from its ``prompt.jsonl`` (system prompt, template, default prompt text) and
``reviewer.jsonl`` (which prompt each category uses, temperature, max tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from selfee.errors import ConfigError
from selfee.prompts import CODING_JUDGE, GENERAL_JUDGE, MATH_JUDGE, JudgeTemplate
from selfee.records import read_jsonl

GENERAL = "general"
ROUTED = {"coding": "coding", "math": "math"}  # question category -> judge category


@dataclass(frozen=True)
class Reviewer:
    reviewer_id: str
    category: str
    template: JudgeTemplate
    temperature: float | None = None  # None: the job's setting
    max_tokens: int | None = None


def our_reviewers() -> dict[str, Reviewer]:
    return {
        GENERAL: Reviewer("selfee-judge-general", GENERAL, GENERAL_JUDGE),
        "coding": Reviewer("selfee-judge-coding", "coding", CODING_JUDGE),
        "math": Reviewer("selfee-judge-math", "math", MATH_JUDGE),
    }


def reviewer_for(question_category: str, reviewers: dict[str, Reviewer]) -> Reviewer:
    return reviewers.get(ROUTED.get(question_category, GENERAL)) or reviewers[GENERAL]


def load_upstream(prompts_path: Path, reviewers_path: Path) -> dict[str, Reviewer]:
    """Reviewers from the upstream ``prompt.jsonl`` + ``reviewer.jsonl`` (FastChat format)."""
    templates: dict[int, JudgeTemplate] = {}
    for n, row in enumerate(_rows(prompts_path), 1):
        try:
            template = JudgeTemplate(
                system_prompt=row["system_prompt"],
                prompt_template=row["prompt_template"],
                prompt=row.get("defaults", {}).get("prompt", ""),
            )
            template.messages("q", "a", "b")  # fails now, not mid-job, on unknown fields
            templates[row["prompt_id"]] = template
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise ConfigError(f"{prompts_path}: prompt {n} is not a judge prompt ({e!r})") from None
    reviewers: dict[str, Reviewer] = {}
    for n, row in enumerate(_rows(reviewers_path), 1):
        try:
            meta = row.get("metadata") or {}
            reviewers[row["category"]] = Reviewer(
                reviewer_id=str(row["reviewer_id"]),
                category=row["category"],
                template=templates[row["prompt_id"]],
                temperature=meta.get("temperature"),
                max_tokens=meta.get("max_tokens"),
            )
        except KeyError as e:
            raise ConfigError(
                f"{reviewers_path}: reviewer {n} lacks or names an unknown {e}"
            ) from None
    if GENERAL not in reviewers:
        raise ConfigError(f"{reviewers_path} has no reviewer for the 'general' category")
    return reviewers


def _rows(path: Path) -> list[dict]:
    try:
        return list(read_jsonl(path))
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:  # read_jsonl names the file and line
        raise ConfigError(str(e)) from None
