"""Comparing two models from their pairwise reviews in both orders (SelFee's evaluation).

``X_vs_Y.jsonl`` holds judgments with X's answer shown first (``score[0]`` is X's);
``Y_vs_X.jsonl`` the same questions with the order swapped. Every judgment counts: totals
over both orders, the relative score (A's total / B's total), wins / ties / losses per
judgment. Judgments without a readable score are left out and counted, never guessed.

Statistics that hold up (``uncertainty``):

- 95% intervals for the relative score and the win rate (wins + ties/2, over judgments) by
  a *paired* bootstrap over questions: a question's two orders are resampled together;
- a length-controlled win rate: judges prefer longer answers, so the judgment (win 1,
  tie 1/2, loss 0) is regressed on the length difference of the two answers —
  P(A wins) = sigmoid(b0 + b1 * tanh((words A - words B) / sd) + b2 * order), with order +1
  when A is shown first and -1 otherwise — and the fitted model is read at equal length,
  averaged over the two orders: (sigmoid(b0 + b2) + sigmoid(b0 - b2)) / 2. This is the idea
  of AlpacaEval 2's length control (a GLM read with the length term at zero), on our own
  covariates and implemented here (``selfee.stats.logistic_fit``);
- the share of questions whose two orders disagree (the verdict changes when only the
  order of the answers changes).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfee import plots, stats
from selfee.errors import ConfigError
from selfee.records import read_object_rows, read_questions
from selfee.tables import columns

VS = "_vs_"


class ReportError(ValueError):
    """Review files that cannot be compared (the message says why)."""


@dataclass(frozen=True)
class Judgment:
    question_id: Any
    category: str
    a_first: bool  # A's answer was shown as "Assistant 1"
    score_a: float | None  # None: no readable score
    score_b: float | None
    words_a: int | None
    words_b: int | None

    @property
    def parsed(self) -> bool:
        return self.score_a is not None and self.score_b is not None

    @property
    def outcome(self) -> str:
        assert self.score_a is not None and self.score_b is not None
        if self.score_a > self.score_b:
            return "win"
        return "tie" if self.score_a == self.score_b else "loss"


def names_from_path(path: Path) -> tuple[str, str]:
    stem = Path(path).name.removesuffix(".jsonl")
    first, sep, second = stem.partition(VS)
    if not sep or not first or not second:
        raise ReportError(f"{path}: review files are named FIRST_vs_SECOND.jsonl")
    return first, second


def _score(row: dict[str, Any], where: str) -> tuple[float, float] | None:
    score = row.get("score")
    meta = row.get("metadata") or {}
    if isinstance(score, list) and any(
        isinstance(s, float) and not math.isfinite(s) for s in score
    ):
        raise ReportError(f"{where}: the score {score} is not two numbers (a broken file?)")
    if meta.get("parsed") is False or meta.get("error") or not isinstance(score, list | tuple):
        return None
    if len(score) != 2 or any(not isinstance(s, int | float) or s < 0 for s in score):
        return None
    return float(score[0]), float(score[1])


def load_judgments(
    path: Path,
    model_a: str,
    categories: dict[Any, str] | None = None,
    words: dict[str, int] | None = None,
) -> list[Judgment]:
    first, second = names_from_path(path)
    if model_a not in (first, second):
        raise ReportError(f"{path} does not compare {model_a}")
    a_first = first == model_a
    judgments = []
    if not Path(path).is_file():
        raise ReportError(f"review file {path} does not exist")
    rows = _objects(path, "review")
    seen: dict[Any, int] = {}
    for n, row in rows:
        if not isinstance(row.get("question_id"), str | int | float):
            raise ReportError(f"{path}:{n}: 'question_id' must be a string or a number")
        qid = json.dumps(row["question_id"])
        if qid in seen:
            raise ReportError(
                f"{path}:{n}: question {qid} is judged again (first on line {seen[qid]}); "
                "one judgment per question and order"
            )
        seen[qid] = n
        meta = row.get("metadata") or {}
        score = _score(row, f"{path}:{n}")
        s1, s2 = score if score else (None, None)
        w1 = meta.get("answer1_words", (words or {}).get(str(row.get("answer1_id"))))
        w2 = meta.get("answer2_words", (words or {}).get(str(row.get("answer2_id"))))
        category = (categories or {}).get(row.get("question_id")) or meta.get("category") or "all"
        judgments.append(
            Judgment(
                question_id=row.get("question_id"),
                category=str(category),
                a_first=a_first,
                score_a=s1 if a_first else s2,
                score_b=s2 if a_first else s1,
                words_a=w1 if a_first else w2,
                words_b=w2 if a_first else w1,
            )
        )
    return judgments


def summarize(
    judgments: list[Judgment], model_a: str, model_b: str, resamples: int = 2000
) -> dict[str, Any]:
    parsed = [j for j in judgments if j.parsed]
    result: dict[str, Any] = {"model_a": model_a, "model_b": model_b, **_totals(parsed)}
    result.update(uncertainty(parsed, resamples))
    result["judgments"] = len(judgments)
    result["unparsed"] = len(judgments) - len(parsed)
    by_category: dict[str, list[Judgment]] = defaultdict(list)
    for j in parsed:
        by_category[j.category].append(j)
    result["per_category"] = {c: _totals(js) for c, js in sorted(by_category.items())}
    result.update(_consistency(parsed))
    for side in ("a", "b"):
        lengths = [getattr(j, f"words_{side}") for j in judgments]
        known = [n for n in lengths if isinstance(n, int)]
        result[f"mean_words_{side}"] = round(sum(known) / len(known), 1) if known else None
    return result


OUTCOME_VALUE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def uncertainty(parsed: list[Judgment], resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap intervals, the length-controlled win rate, order disagreement."""
    by_question: dict[Any, list[Judgment]] = defaultdict(list)
    for j in parsed:
        by_question[json.dumps(j.question_id)].append(j)
    groups = list(by_question.values())
    score_a = [sum(j.score_a or 0.0 for j in g) for g in groups]
    score_b = [sum(j.score_b or 0.0 for j in g) for g in groups]
    won = [sum(OUTCOME_VALUE[j.outcome] for j in g) for g in groups]
    count = [len(g) for g in groups]
    relative = stats.ratio_interval(score_a, score_b, resamples, seed)
    win_ci = stats.ratio_interval(won, count, resamples, seed)
    result: dict[str, Any] = {
        "win_rate": round(sum(won) / sum(count), 4) if parsed else None,
        "relative_percent_ci": _rounded(relative, 100),
        "win_rate_ci": _rounded(win_ci),
        "length_controlled_win_rate": None,
        "length_controlled_win_rate_ci": None,
    }
    with_words = [g for g in groups if all(_has_words(j) for j in g)]
    if len(with_words) >= 2:
        result["length_controlled_win_rate"] = round(length_controlled_win_rate(
            [j for g in with_words for j in g]), 4)  # fmt: skip

        def lc(idx: Any) -> float:
            return length_controlled_win_rate([j for i in idx for j in with_words[i]])

        result["length_controlled_win_rate_ci"] = _rounded(
            stats.statistic_interval(len(with_words), lc, min(resamples, 1000), seed)
        )
    return result


def _has_words(j: Judgment) -> bool:
    return isinstance(j.words_a, int) and isinstance(j.words_b, int)


def _rounded(ci: tuple[float, float] | None, scale: float = 1.0) -> list[float] | None:
    if ci is None or not all(math.isfinite(v) for v in ci):
        return None
    return [
        round(scale * ci[0], 4 if scale == 1 else 1),
        round(scale * ci[1], 4 if scale == 1 else 1),
    ]


def length_controlled_win_rate(judgments: list[Judgment]) -> float:
    """A's win rate at equal answer length (see the module docstring)."""
    import numpy as np

    diff = np.array([j.words_a - j.words_b for j in judgments], float)  # type: ignore[operator]
    spread = float(diff.std()) or 1.0
    order = np.array([1.0 if j.a_first else -1.0 for j in judgments])
    features = np.column_stack([np.ones(len(judgments)), np.tanh(diff / spread), order])
    outcome = np.array([OUTCOME_VALUE[j.outcome] for j in judgments])
    b0, _, b2 = stats.logistic_fit(features, outcome)
    return float((stats.sigmoid(np.array(b0 + b2)) + stats.sigmoid(np.array(b0 - b2))) / 2)


def _totals(judgments: list[Judgment]) -> dict[str, Any]:
    score_a = sum(j.score_a or 0.0 for j in judgments)
    score_b = sum(j.score_b or 0.0 for j in judgments)
    outcomes = [j.outcome for j in judgments]
    return {
        "score_a": round(score_a, 2),
        "score_b": round(score_b, 2),
        "relative_percent": round(100 * score_a / score_b, 1) if score_b else None,
        "win": outcomes.count("win"),
        "tie": outcomes.count("tie"),
        "loss": outcomes.count("loss"),
        "n": len(judgments),
    }


def _consistency(parsed: list[Judgment]) -> dict[str, Any]:
    """How often the verdict changes when only the order of the answers changes."""
    by_question: dict[Any, dict[bool, str]] = defaultdict(dict)
    for j in parsed:
        by_question[j.question_id][j.a_first] = j.outcome
    pairs = [v for v in by_question.values() if len(v) == 2]
    flips = sum(1 for v in pairs if v[True] != v[False])
    return {
        "order_pairs": len(pairs),
        "order_flips": flips,
        "order_disagreement": round(flips / len(pairs), 3) if pairs else None,
        "position_consistency": round(1 - flips / len(pairs), 3) if pairs else None,
    }


def pair_reviews(paths: list[Path]) -> list[tuple[str, str, list[Path]]]:
    """Group review files into comparisons: (model A, model B, its files); A is named first
    in the first file of each pair, as given. One file per order, at most."""
    pairs: dict[frozenset[str], tuple[str, str, list[Path]]] = {}
    given: set[Path] = set()
    for path in map(Path, paths):
        if path.resolve() in given:
            raise ReportError(f"{path} is given twice: give one review file per order")
        given.add(path.resolve())
        first, second = names_from_path(path)
        key = frozenset((first, second))
        if key not in pairs:
            pairs[key] = (first, second, [])
        files = pairs[key][2]
        if any(names_from_path(f) == (first, second) for f in files):
            raise ReportError(
                f"{files[0]} and {path} both show {first}'s answer first: the other order is "
                f"{second}{VS}{first}.jsonl"
            )
        files.append(path)
    return list(pairs.values())


def questions_in_both_orders(
    judgments: list[Judgment], files: list[Path]
) -> tuple[list[Judgment], list[str]]:
    """Only questions judged in both orders are compared (when both orders are given);
    returns them and the warnings to show."""
    if not judgments:
        raise ReportError(f"{' and '.join(map(str, files))}: no judgments to compare")
    if len(files) < 2:
        return judgments, []
    orders = [{j.question_id for j in judgments if j.a_first == side} for side in (True, False)]
    both = orders[0] & orders[1]
    if not both:
        raise ReportError(
            f"{files[0]} and {files[1]} judge different questions (none in common): are they "
            "the two orders of one comparison?"
        )
    alone = len(orders[0] | orders[1]) - len(both)
    warnings = []
    if alone:
        warnings.append(
            f"{alone} question(s) are judged in one order only and are left out; "
            f"{len(both)} questions compared"
        )
    return [j for j in judgments if j.question_id in both], warnings


def read_categories(questions: Path | None) -> dict[Any, str]:
    if questions is None:
        return {}
    return {q["question_id"]: q.get("category") or "all" for q in read_questions(questions)}


def read_answer_words(answers: list[Path]) -> dict[str, int]:
    """Words per answer id, for review files that do not record answer lengths."""
    return {
        str(row["answer_id"]): len(str(row.get("text", "")).split())
        for path in answers
        for _, row in _objects(path, "answer")
        if "answer_id" in row
    }


def _objects(path: Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """``records.read_object_rows``, its errors as the report's own (a usage error)."""
    try:
        return read_object_rows(path, what)
    except ConfigError as e:
        raise ReportError(str(e)) from None


def build_report(
    paths: list[Path],
    questions: Path | None = None,
    model_a: str | None = None,
    model_b: str | None = None,
    answers: list[Path] | None = None,
    resamples: int = 2000,
) -> list[dict[str, Any]]:
    categories = read_categories(questions)
    words = read_answer_words(answers or [])
    reports = []
    for first, second, files in pair_reviews(paths):
        a, b = first, second
        if model_a or model_b:
            a = model_a if model_a in (first, second) else a
            b = second if a == first else first
            if model_b and model_b not in (first, second):
                raise ReportError(f"no review file compares {model_b}")
        judgments = [j for f in files for j in load_judgments(f, a, categories, words)]
        judgments, warnings = questions_in_both_orders(judgments, files)
        reports.append({**summarize(judgments, a, b, resamples), "files": [str(f) for f in files],
                        "questions": len({j.question_id for j in judgments}),
                        "warnings": warnings})  # fmt: skip
    return reports


# --- rendering -------------------------------------------------------------------------


def format_table(reports: list[dict[str, Any]]) -> str:
    """The SelFee blog's layout: one row per comparison, then per-category rows, then the
    statistics (intervals, length control, order disagreement)."""
    header = [
        "model A",
        "model B",
        "score A",
        "score B",
        "A/B %",
        "win/tie/loss",
        "consistency",
        "unparsed",
    ]
    rows = [header]
    for r in reports:
        rows.append([
            r["model_a"], r["model_b"], f"{r['score_a']:g}", f"{r['score_b']:g}",
            f"{r['relative_percent']}%", f"{r['win']}/{r['tie']}/{r['loss']}",
            "-" if r["position_consistency"] is None else f"{r['position_consistency']:.1%}",
            str(r["unparsed"]),
        ])  # fmt: skip
    lines = columns(rows)
    for r in reports:
        lines += ["", f"{r['model_a']} vs {r['model_b']}, 95% paired bootstrap intervals:"]
        lines += columns([
            ["statistic", "value", "95% CI"],
            ["A/B score %", f"{r['relative_percent']}%", _ci_text(r["relative_percent_ci"], 1)],
            ["win rate of A", _share(r["win_rate"]), _ci_text(r["win_rate_ci"])],
            ["length-controlled win rate", _share(r["length_controlled_win_rate"]),
             _ci_text(r["length_controlled_win_rate_ci"])],
            ["questions whose orders disagree", _share(r["order_disagreement"]), ""],
        ])  # fmt: skip
        if r["length_controlled_win_rate"] is None:
            lines.append("(length control needs answer lengths: give --answers A.jsonl B.jsonl)")
        lines += ["", f"{r['model_a']} vs {r['model_b']} by category:"]
        cat_rows = [["category", "score A", "score B", "A/B %", "win/tie/loss"]]
        for name, c in r["per_category"].items():
            cat_rows.append([name, f"{c['score_a']:g}", f"{c['score_b']:g}",
                             f"{c['relative_percent']}%", f"{c['win']}/{c['tie']}/{c['loss']}"])  # fmt: skip
        lines += columns(cat_rows)
        if r["mean_words_a"] is not None:
            lines.append(
                f"mean answer length: {r['model_a']} {r['mean_words_a']} words, "
                f"{r['model_b']} {r['mean_words_b']} words"
            )
    return "\n".join(lines)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _ci_text(ci: list[float] | None, scale: float = 100) -> str:
    return "-" if not ci else f"[{scale * ci[0]:.1f}, {scale * ci[1]:.1f}]"


def to_json(reports: list[dict[str, Any]]) -> str:
    return json.dumps(reports[0] if len(reports) == 1 else {"pairs": reports}, indent=2)


def plot(reports: list[dict[str, Any]], path: Path) -> Path:
    """Per-category relative scores and the win/tie/loss bar, one row of panels per pair."""
    plt = plots.pyplot()
    fig, axes = plt.subplots(len(reports), 3, figsize=(16, 4.2 * len(reports)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2, 2]})  # fmt: skip
    for (left, right, rates), r in zip(axes, reports, strict=True):
        _plot_rates(rates, r)
        names = list(r["per_category"])
        values = [r["per_category"][c]["relative_percent"] or 0 for c in names]
        colors = ["#2a9d8f" if v >= 100 else "#e76f51" for v in values]
        left.barh(names, values, color=colors)
        left.axvline(100, color="black", linewidth=1)
        left.set_xlabel(f"{r['model_a']} score as % of {r['model_b']}")
        ci = r.get("relative_percent_ci")
        left.set_title(f"{r['model_a']} vs {r['model_b']}: {r['relative_percent']}% overall"
                       + (f" (95% CI {ci[0]}-{ci[1]}%)" if ci else ""))  # fmt: skip
        for y, v in enumerate(values):
            left.text(v, y, f" {v:.1f}%", va="center", fontsize=8)
        left.invert_yaxis()
        parts = [("win", "#2a9d8f"), ("tie", "#adb5bd"), ("loss", "#e76f51")]
        start = 0
        for key, color in parts:
            right.barh([0], [r[key]], left=[start], color=color)
            if r[key]:
                right.text(start + r[key] / 2, 0, f"{key}\n{r[key]}", ha="center", va="center")
            start += r[key]
        right.set_yticks([])
        right.set_xlim(0, max(start, 1))
        right.set_xlabel(f"judgments (both orders, {r['unparsed']} unparsed left out)")
        right.set_title(f"{r['model_a']}: wins / ties / losses")
    return plots.save(fig, path)


def _plot_rates(ax: Any, r: dict[str, Any]) -> None:
    """Win rate and length-controlled win rate with their 95% intervals, against 50%."""
    names, values, errors = [], [], [[], []]
    for name, key in (
        ("win rate", "win_rate"),
        ("length-controlled", "length_controlled_win_rate"),
    ):
        value, ci = r.get(key), r.get(f"{key}_ci")
        if value is None:
            continue
        names.append(name)
        values.append(100 * value)
        errors[0].append(100 * (value - ci[0]) if ci else 0)
        errors[1].append(100 * (ci[1] - value) if ci else 0)
    ax.errorbar(values, range(len(values)), xerr=errors, fmt="o", capsize=5, color="#264653")
    for y, v in enumerate(values):
        ax.text(v, y + 0.15, f"{v:.1f}%", ha="center", fontsize=8)
    ax.axvline(50, color="black", linewidth=1)
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlim(0, 100)
    ax.set_xlabel(f"{r['model_a']} win rate, % (95% paired bootstrap CI)")
    disagree = r.get("order_disagreement")
    ax.set_title("orders disagree on " + ("-" if disagree is None else f"{100 * disagree:.0f}%")
                 + " of questions")  # fmt: skip
