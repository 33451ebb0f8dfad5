"""parse_score on every published judge text, and on the other forms judges write."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfee.judge import parse_score
from selfee.records import read_jsonl


def test_every_published_review_parses_to_its_recorded_score(reference: Path) -> None:
    reviews = [r for f in sorted((reference / "review").glob("*.jsonl")) for r in read_jsonl(f)]
    assert len(reviews) >= 160
    for review in reviews:
        expected = tuple(float(s) for s in review["score"])
        assert parse_score(review["text"]) == expected, (
            review["question_id"],
            review["text"][:300],
        )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8 9\nAssistant 2 is more detailed.", (8, 9)),
        ("8, 9\n", (8, 9)),
        ("7.5 8.5", (7.5, 8.5)),
        ("8/10 9/10", (8, 9)),
        ("First I solve it.\n...\nOutput: (10, 4)", (10, 4)),
        ("Scores:\nAssistant 1: 4 (wrong answer)\nAssistant 2: 10 (correct)", (4, 10)),
        ("Assistant 1: 4/10\nAssistant 2: 9/10", (4, 9)),
        ("**Assistant 1:** 8\n**Assistant 2:** 7", (8, 7)),
        ("Assistant 1's score: 6\nAssistant 2's score: 9", (6, 9)),
        ("I would give Assistant 1 a score of 7 and Assistant 2 a score of 9.", (7, 9)),
        ("Assistant 1 receives a 6, while Assistant 2 receives an 8.", (6, 8)),
        (
            "Both were right.\n\nAssistant 1:\n1. Correct steps.\n\nI give both of them a score of 10.",
            (10, 10),
        ),
        ("Assistant 1 and Assistant 2 both answered.\n(3, 7)", (3, 7)),
        # a judge that solves the problem first writes coordinates long before its scores
        (
            "The vertices are (0, 0), (10, 4) and (3, 2).\nThe area is 14.\n\nAssistant 1: 8/10\n"
            "Assistant 2: 6/10",
            (8, 6),
        ),
        (
            "Midpoint of (2, 4) and (6, 8) is (4, 6).\nI would give Assistant 1 a score of 9 and "
            "Assistant 2 a score of 3.",
            (9, 3),
        ),
        ("Point (1, 2) lies on it. I give both of them a score of 7.", (7, 7)),
        # and the statement nearest the end still wins when it is the pair
        ("Assistant 1: 8/10\nAssistant 2: 6/10\nOn reflection, final scores: (5, 9)", (5, 9)),
    ],
)
def test_forms_judges_write(text: str, expected: tuple[float, float]) -> None:
    assert parse_score(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "No scores, sorry.",
        "2023 2024\nyears, not scores",
        "Assistant 1:\nThe steps are right.",
        "(11, 12)",
        "Both answers have merits; I cannot settle on numbers.",
    ],
)
def test_unreadable_is_none_not_a_guess(text: str) -> None:
    assert parse_score(text) is None
