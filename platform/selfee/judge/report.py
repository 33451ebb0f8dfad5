"""Comparing two models from their pairwise reviews in both orders (SelFee's evaluation).

``X_vs_Y.jsonl`` holds judgments with X's answer shown first (``score[0]`` is X's);
``Y_vs_X.jsonl`` the same questions with the order swapped. Every judgment counts: totals
over both orders, the relative score (A's total / B's total), wins / ties / losses per
judgment. Judgments without a readable score are left out and counted, never guessed.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfee.records import read_jsonl

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


def _score(row: dict[str, Any]) -> tuple[float, float] | None:
    score = row.get("score")
    meta = row.get("metadata") or {}
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
    try:
        rows = list(read_jsonl(path))
    except FileNotFoundError:
        raise ReportError(f"review file {path} does not exist") from None
    for row in rows:
        meta = row.get("metadata") or {}
        score = _score(row)
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


def summarize(judgments: list[Judgment], model_a: str, model_b: str) -> dict[str, Any]:
    parsed = [j for j in judgments if j.parsed]
    result: dict[str, Any] = {"model_a": model_a, "model_b": model_b, **_totals(parsed)}
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
        "position_consistency": round(1 - flips / len(pairs), 3) if pairs else None,
    }


def pair_reviews(paths: list[Path]) -> list[tuple[str, str, list[Path]]]:
    """Group review files into comparisons: (model A, model B, its files); A is named first
    in the first file of each pair, as given."""
    pairs: dict[frozenset[str], tuple[str, str, list[Path]]] = {}
    for path in paths:
        first, second = names_from_path(path)
        key = frozenset((first, second))
        if key not in pairs:
            pairs[key] = (first, second, [])
        pairs[key][2].append(Path(path))
    return list(pairs.values())


def read_categories(questions: Path | None) -> dict[Any, str]:
    if questions is None:
        return {}
    return {q["question_id"]: q.get("category", "all") for q in read_jsonl(questions)}


def read_answer_words(answers: list[Path]) -> dict[str, int]:
    """Words per answer id, for review files that do not record answer lengths."""
    return {
        str(row["answer_id"]): len(str(row.get("text", "")).split())
        for path in answers
        for row in read_jsonl(path)
        if "answer_id" in row
    }


def build_report(
    paths: list[Path],
    questions: Path | None = None,
    model_a: str | None = None,
    model_b: str | None = None,
    answers: list[Path] | None = None,
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
        reports.append({**summarize(judgments, a, b), "files": [str(f) for f in files]})
    return reports


# --- rendering -------------------------------------------------------------------------


def format_table(reports: list[dict[str, Any]]) -> str:
    """The SelFee blog's layout: one row per comparison, then per-category rows."""
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
    lines = _columns(rows)
    for r in reports:
        lines += ["", f"{r['model_a']} vs {r['model_b']} by category:"]
        cat_rows = [["category", "score A", "score B", "A/B %", "win/tie/loss"]]
        for name, c in r["per_category"].items():
            cat_rows.append([name, f"{c['score_a']:g}", f"{c['score_b']:g}",
                             f"{c['relative_percent']}%", f"{c['win']}/{c['tie']}/{c['loss']}"])  # fmt: skip
        lines += _columns(cat_rows)
        if r["mean_words_a"] is not None:
            lines.append(
                f"mean answer length: {r['model_a']} {r['mean_words_a']} words, "
                f"{r['model_b']} {r['mean_words_b']} words"
            )
    return "\n".join(lines)


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    out = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def to_json(reports: list[dict[str, Any]]) -> str:
    return json.dumps(reports[0] if len(reports) == 1 else {"pairs": reports}, indent=2)


def plot(reports: list[dict[str, Any]], path: Path) -> Path:
    """Per-category relative scores and the win/tie/loss bar, one row of panels per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(reports), 2, figsize=(12, 4.2 * len(reports)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]})  # fmt: skip
    for (left, right), r in zip(axes, reports, strict=True):
        names = list(r["per_category"])
        values = [r["per_category"][c]["relative_percent"] or 0 for c in names]
        colors = ["#2a9d8f" if v >= 100 else "#e76f51" for v in values]
        left.barh(names, values, color=colors)
        left.axvline(100, color="black", linewidth=1)
        left.set_xlabel(f"{r['model_a']} score as % of {r['model_b']}")
        left.set_title(f"{r['model_a']} vs {r['model_b']}: {r['relative_percent']}% overall")
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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
