"""Per-turn accounting on scripted chains whose correctness per turn is known: turns,
carry-forward, flips, the verdict as a detector, majority vote at equal tokens, and
bootstrap intervals that cover the truth about 95% of the time."""

from __future__ import annotations

import numpy as np
import pytest

from selfee import stats
from selfee.chain import Verdict, feedback_header, render_prompt, revision_header
from selfee.eval.tasks import TASKS
from selfee.eval.turns import QuestionResult, Score, chain_turns, majority_at_budget, summarize

NEEDED, NOT_NEEDED = "Revision is needed.", "Revision is not needed."


def chain(*steps: tuple[str, str | None]) -> str:
    """A whole generation: (output, feedback or None) per turn."""
    text = render_prompt("What is 6 * 7?")
    for k, (output, feedback) in enumerate(steps):
        text += (revision_header(k) if k else "") + output
        if feedback is not None:
            text += feedback_header(k + 1) + feedback
    return text


def test_chain_turns_reads_outputs_and_the_verdict_on_each() -> None:
    turns = chain_turns(chain(("41", f"Off by one. {NEEDED}"), ("42", f"Right. {NOT_NEEDED}")))
    assert turns.outputs == ("41", "42")
    assert turns.verdicts == (Verdict.NEEDED, Verdict.NOT_NEEDED)


def test_a_last_revision_cut_off_does_not_count_and_a_lone_answer_does() -> None:
    cut = chain(("41", NEEDED), ("42 and then the budget ran o", None))
    assert chain_turns(cut).outputs == ("41",)
    assert chain_turns(chain(("42", None))).outputs == ("42",)
    assert chain_turns(chain(("42", None))).verdicts == (None,)


def test_forced_verdicts_replace_the_rewritten_text() -> None:
    text = chain(("42", NEEDED), ("42", NEEDED), ("42", NOT_NEEDED))
    turns = chain_turns(text, {"1": "not needed", "2": "unknown"})
    assert turns.verdicts == (Verdict.NOT_NEEDED, Verdict.UNKNOWN, Verdict.NOT_NEEDED)


def scored(correct: list[bool], verdicts: list[Verdict | None], **extra) -> QuestionResult:
    return QuestionResult("q", [Score(c, "1" if c else "0") for c in correct], verdicts, **extra)


def test_accuracy_per_turn_carries_the_last_answer_forward_and_counts_flips() -> None:
    n, nn = Verdict.NEEDED, Verdict.NOT_NEEDED
    questions = [
        scored([False, True, True, True], [n, nn, nn, nn]),  # fixed at turn 1
        scored([True, False, True, True], [nn, n, nn, nn]),  # broken, then fixed
        scored([True], [nn]),  # stopped early, right: carried to turn 3
        scored([False, False], [n, nn]),  # stopped after one revision, still wrong
    ]
    summary = summarize(questions, revisions=3, resamples=500)
    assert [t["accuracy"] for t in summary["turns"]] == [0.5, 0.5, 0.75, 0.75]
    assert [t["n"] for t in summary["turns"]] == [4, 4, 4, 4]
    assert [(f["wrong_to_right"], f["right_to_wrong"]) for f in summary["flips"]] == [
        (1, 1), (1, 0), (0, 0)
    ]  # fmt: skip
    assert summary["forced"]["accuracy"] == 0.75
    assert summary["forced"]["mean_revisions"] == pytest.approx((3 + 3 + 0 + 1) / 4)
    for turn in summary["turns"]:
        lo, hi = turn["ci"]
        assert lo <= turn["accuracy"] <= hi


def test_the_verdict_as_a_detector_of_wrong_answers() -> None:
    n, nn, unknown = Verdict.NEEDED, Verdict.NOT_NEEDED, Verdict.UNKNOWN
    questions = [
        scored([False, True], [n, nn]),  # tp, tn
        scored([False, False], [nn, n]),  # fn, tp
        scored([True, True], [n, unknown]),  # fp, (no verdict)
        scored([True], [None]),  # no feedback: not counted
    ]
    verdict = summarize(questions, revisions=1, resamples=200)["verdict"]
    assert verdict["counts"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 1, "no_verdict": 1}
    assert verdict["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert verdict["recall"] == pytest.approx(2 / 3, abs=1e-4)


def test_unread_answers_count_as_wrong_and_are_reported() -> None:
    questions = [QuestionResult("q", [Score(False, None, "no answer found")], [None])]
    summary = summarize(questions, revisions=0, resamples=200)
    assert summary["turns"][0]["accuracy"] == 0 and summary["unparsed"]["turns"] == 1


def test_majority_vote_uses_samples_while_they_fit_the_budget() -> None:
    key = TASKS["gsm8k"].vote_key
    samples = [(Score(False, "41"), 10), (Score(True, "42"), 10), (Score(True, "42.0"), 10),
               (Score(False, "41"), 10), (Score(False, "41"), 10)]  # fmt: skip
    voted, tokens, used = majority_at_budget(samples, 30, key)  # type: ignore[misc]
    assert (voted.correct, tokens, used) == (True, 30, 3)  # 42 and 42.0 are one answer
    voted, tokens, used = majority_at_budget(samples, 50, key)  # type: ignore[misc]
    assert (voted.correct, used) == (False, 5)
    voted, tokens, used = majority_at_budget(samples, 5, key)  # type: ignore[misc]
    assert used == 1 and tokens == 10  # at least one sample
    tie = [(Score(True, "1"), 1), (Score(False, "2"), 1)]
    assert majority_at_budget(tie, 10, key)[0].correct  # type: ignore[index]
    unread = [(Score(False, None), 5)]
    assert not majority_at_budget(unread, 10, key)[0].correct  # type: ignore[index]


def test_baselines_and_autonomous_report_tokens_per_point() -> None:
    q = scored([False, True], [Verdict.NEEDED, Verdict.NOT_NEEDED], tokens=200)
    q.autonomous, q.autonomous_revisions, q.autonomous_tokens = Score(True, "42"), 1, 150
    q.first, q.first_tokens = Score(False, "41"), 50
    q.samples = [(Score(True, "42"), 60), (Score(True, "42"), 60), (Score(False, "7"), 60)]
    summary = summarize([q], revisions=1, resamples=200, vote_key=str)
    assert summary["autonomous"]["accuracy"] == 1 and summary["autonomous"]["mean_revisions"] == 1
    assert summary["autonomous"]["tokens_per_point"] == 1.5  # 150 tokens / 100 points
    assert summary["baselines"]["first_answer"]["accuracy"] == 0
    assert summary["baselines"]["first_answer"]["tokens_per_point"] is None
    vote = summary["baselines"]["majority_vote"]
    assert vote["accuracy"] == 1 and vote["mean_samples"] == 3 and vote["tokens"] == 180
    assert summary["forced"]["tokens_per_point"] == 2.0


@pytest.mark.parametrize("p", [0.3, 0.75])
def test_bootstrap_intervals_cover_the_true_accuracy_about_95_percent(p: float) -> None:
    rng = np.random.default_rng(7)
    trials, n, covered = 300, 120, 0
    for trial in range(trials):
        values = (rng.random(n) < p).astype(float)
        lo, hi = stats.mean_interval(values, resamples=1000, seed=trial)  # type: ignore[misc]
        covered += lo <= p <= hi
    assert 0.90 <= covered / trials <= 0.985, covered / trials
