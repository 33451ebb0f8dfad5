"""Per-turn accounting: what each revision did to correctness, and what the verdicts knew.

Turn 0 is the answer, turn k revision k. A chain is read as ``selfee.chain`` reads it: a
last revision cut off by the token budget (no feedback after it) does not count, as it does
not count as the final answer. A chain that ended before turn k carries its last answer to
turn k. The model's verdict on turn k is the one that ends feedback k+1; where revision
control forced a revision, the verdict the model had written (``forced_verdicts`` in the
answer's metadata) is used instead of the "Revision is needed." put in its place.

Everything here is pure: scores come in (``Score`` per text), the report comes out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from selfee import stats
from selfee.chain import Verdict, detect_verdict, parse


@dataclass(frozen=True)
class Score:
    """One text scored: ``answer`` as read (None: nothing to read), and whether it is right."""

    correct: bool
    answer: str | None
    detail: str = ""

    @property
    def parsed(self) -> bool:
        return self.answer is not None


@dataclass(frozen=True)
class ChainTurns:
    """A chain's outputs (turn 0 = the answer) and the model's verdict on each (None: no
    feedback followed it)."""

    outputs: tuple[str, ...]
    verdicts: tuple[Verdict | None, ...]


def chain_turns(generation: str, forced_verdicts: dict[str, str] | None = None) -> ChainTurns:
    chain = parse(generation)
    segments = chain.segments
    kept = [i for i, s in enumerate(segments) if s.kind != "feedback"]
    if len(kept) > 1 and kept[-1] == len(segments) - 1:  # a last revision without feedback
        kept.pop()
    outputs, verdicts = [], []
    for turn, i in enumerate(kept):
        outputs.append(segments[i].text)
        after = segments[i + 1] if i + 1 < len(segments) else None
        own = (forced_verdicts or {}).get(str(turn + 1))
        if after is None or after.kind != "feedback":
            verdicts.append(None)
        elif own is not None:
            verdicts.append(Verdict(own))
        else:
            verdicts.append(detect_verdict(after.text))
    return ChainTurns(tuple(outputs), tuple(verdicts))


@dataclass
class QuestionResult:
    """Everything scored for one question."""

    question_id: Any
    turns: list[Score]  # the per-turn chain, as written (1 + revisions)
    verdicts: list[Verdict | None]
    tokens: int | None = None  # generated for the per-turn chain
    autonomous: Score | None = None
    autonomous_revisions: int = 0
    autonomous_tokens: int | None = None
    first: Score | None = None  # the first answer alone (greedy, no feedback)
    first_tokens: int | None = None
    samples: list[tuple[Score, int]] = field(default_factory=list)  # (score, tokens)

    def at_turn(self, k: int) -> Score:
        return self.turns[min(k, len(self.turns) - 1)]


def majority_at_budget(
    samples: list[tuple[Score, int]], budget: int | None, key: Any
) -> tuple[Score, int, int] | None:
    """Majority vote over samples taken in order while their tokens fit ``budget`` (at least
    one): (the voted score, tokens used, samples used). Unread answers do not vote; a tie goes
    to the answer seen first."""
    if not samples:
        return None
    used, spent = [], 0
    for score, tokens in samples:
        if used and budget is not None and spent + tokens > budget:
            break
        used.append(score)
        spent += tokens
    votes = Counter(key(s.answer) for s in used if s.answer is not None)
    if not votes:
        return Score(False, None), spent, len(used)
    order = [key(s.answer) for s in used if s.answer is not None]
    best = max(votes, key=lambda a: (votes[a], -order.index(a)))
    winner = next(s for s in used if s.answer is not None and key(s.answer) == best)
    return winner, spent, len(used)


def _accuracy(values: list[bool], resamples: int, seed: int) -> dict[str, Any]:
    n = len(values)
    ci = stats.mean_interval([float(v) for v in values], resamples, seed)
    return {
        "accuracy": round(sum(values) / n, 4) if n else None,
        "ci": [round(ci[0], 4), round(ci[1], 4)] if ci else None,
        "n": n,
    }


def _per_point(tokens: list[int], accuracy: float | None) -> float | None:
    if not tokens or not accuracy:
        return None
    return round(sum(tokens) / len(tokens) / (100 * accuracy), 1)


def _mean(values: list[int]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def summarize(
    questions: list[QuestionResult], revisions: int, resamples: int = 2000, seed: int = 0,
    vote_key: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """The report: accuracy per turn with bootstrap intervals, flips between turns, the
    verdict as a detector of wrong answers, autonomous stopping, equal-compute baselines."""
    per_turn = [[q.at_turn(k).correct for q in questions] for k in range(revisions + 1)]
    turns = [{"turn": k, **_accuracy(v, resamples, seed + k)} for k, v in enumerate(per_turn)]
    flips = [
        {
            "from_turn": k,
            "to_turn": k + 1,
            "wrong_to_right": sum(
                not a and b for a, b in zip(per_turn[k], per_turn[k + 1], strict=True)
            ),
            "right_to_wrong": sum(
                a and not b for a, b in zip(per_turn[k], per_turn[k + 1], strict=True)
            ),
        }
        for k in range(revisions)
    ]
    forced_tokens = [q.tokens for q in questions if q.tokens is not None]
    final = turns[-1]["accuracy"]
    result: dict[str, Any] = {
        "n": len(questions),
        "turns": turns,
        "flips": flips,
        "verdict": _verdict_detector(questions, revisions),
        "forced": {
            "accuracy": final,
            "ci": turns[-1]["ci"],
            "mean_revisions": _mean([min(len(q.turns) - 1, revisions) for q in questions]),
            "tokens": _mean(forced_tokens),
            "tokens_per_point": _per_point(forced_tokens, final),
        },
        "autonomous": _autonomous(questions, resamples, seed),
        "baselines": _baselines(questions, resamples, seed, vote_key),
        "unparsed": {
            "turns": sum(not s.parsed for q in questions for s in q.turns),
            "autonomous": sum(
                q.autonomous is not None and not q.autonomous.parsed for q in questions
            ),
            "samples": sum(not s.parsed for q in questions for s, _ in q.samples),
        },
    }
    return result


def _verdict_detector(questions: list[QuestionResult], revisions: int) -> dict[str, Any]:
    """ "Revision is needed" as a prediction that the turn's answer is wrong."""
    counts = Counter()
    for q in questions:
        for score, verdict in zip(q.turns[: revisions + 1], q.verdicts, strict=False):
            if verdict is None:
                continue
            if verdict is Verdict.UNKNOWN:
                counts["no_verdict"] += 1
                continue
            needed = verdict is Verdict.NEEDED
            wrong = not score.correct
            counts[{(True, True): "tp", (True, False): "fp", (False, True): "fn",
                    (False, False): "tn"}[(needed, wrong)]] += 1  # fmt: skip
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    return {
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "counts": {k: counts[k] for k in ("tp", "fp", "fn", "tn", "no_verdict")},
    }


def _autonomous(questions: list[QuestionResult], resamples: int, seed: int) -> dict | None:
    scored = [q for q in questions if q.autonomous is not None]
    if not scored:
        return None
    accuracy = _accuracy([q.autonomous.correct for q in scored], resamples, seed + 101)  # type: ignore[union-attr]
    tokens = [q.autonomous_tokens for q in scored if q.autonomous_tokens is not None]
    return {
        **accuracy,
        "mean_revisions": _mean([q.autonomous_revisions for q in scored]),
        "tokens": _mean(tokens),
        "tokens_per_point": _per_point(tokens, accuracy["accuracy"]),
    }


def _baselines(
    questions: list[QuestionResult], resamples: int, seed: int, vote_key: Any
) -> dict[str, Any]:
    baselines: dict[str, Any] = {"first_answer": None, "majority_vote": None}
    firsts = [q for q in questions if q.first is not None]
    if firsts:
        accuracy = _accuracy([q.first.correct for q in firsts], resamples, seed + 202)  # type: ignore[union-attr]
        tokens = [q.first_tokens for q in firsts if q.first_tokens is not None]
        baselines["first_answer"] = {
            **accuracy, "tokens": _mean(tokens),
            "tokens_per_point": _per_point(tokens, accuracy["accuracy"]),
        }  # fmt: skip
    voted = [
        (q, found)
        for q in questions
        if vote_key is not None and (found := majority_at_budget(q.samples, q.tokens, vote_key))
    ]
    if voted:
        accuracy = _accuracy([found[0].correct for _, found in voted], resamples, seed + 303)
        tokens = [found[1] for _, found in voted]
        baselines["majority_vote"] = {
            **accuracy,
            "tokens": _mean(tokens),
            "mean_samples": round(sum(f[2] for _, f in voted) / len(voted), 2),
            "tokens_per_point": _per_point(tokens, accuracy["accuracy"]),
            "budget": "the per-turn chain's tokens, per question",
        }
    return baselines
