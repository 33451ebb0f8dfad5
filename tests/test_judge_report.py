"""`selfee report` on the published SelFee reviews: the published figures, exactly."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from selfee.judge.report import ReportError, build_report, format_table

REPO = Path(__file__).resolve().parents[1]
SELFEE_FIRST = "selfee_13b_enforce_3_revisions_vs_chatgpt.jsonl"
CHATGPT_FIRST = "chatgpt_vs_selfee_13b_enforce_3_revisions.jsonl"


def selfee(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "selfee.cli", *argv], capture_output=True,
                          text=True, cwd=REPO, timeout=120)  # fmt: skip


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_cli_reproduces_the_published_figures(reference: Path, tmp_path: Path) -> None:
    review = reference / "review"
    plot = tmp_path / "report.png"
    done = selfee("report", "--reviews", str(review / SELFEE_FIRST), str(review / CHATGPT_FIRST),
                  "--json", "--plot", str(plot), "--questions", str(reference / "question.jsonl"),
                  "--answers", *map(str, sorted((reference / "answer").glob("*.jsonl"))))  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["model_a"] == "selfee_13b_enforce_3_revisions" and result["model_b"] == "chatgpt"
    assert (result["score_a"], result["score_b"]) == (1359.0, 1320.5)
    assert result["relative_percent"] == 102.9
    assert (result["win"], result["tie"], result["loss"]) == (87, 26, 47)
    assert result["unparsed"] == 0 and result["judgments"] == 160
    per_category = result["per_category"]
    assert sum(c["n"] for c in per_category.values()) == 160
    assert sum(c["score_a"] for c in per_category.values()) == pytest.approx(1359.0)
    assert per_category["coding"]["n"] == 14 and per_category["math"]["n"] == 6
    assert 0 < result["position_consistency"] < 1 and result["order_pairs"] == 80
    assert png_size(plot) == (1600, 420)  # scores, wins/ties/losses, win rates with CIs
    assert result["mean_words_a"] > result["mean_words_b"] > 100  # SelFee answers are longer


def test_tables_and_model_order(reference: Path) -> None:
    review = reference / "review"
    done = selfee("report", "--reviews", str(review / CHATGPT_FIRST), str(review / SELFEE_FIRST),
                  "--model-a", "selfee_13b_enforce_3_revisions")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "102.9%" in done.stdout and "87/26/47" in done.stdout
    flipped = build_report([review / CHATGPT_FIRST, review / SELFEE_FIRST])[0]
    assert flipped["model_a"] == "chatgpt" and flipped["relative_percent"] == 97.2
    assert (flipped["win"], flipped["loss"]) == (47, 87)


def test_several_pairs_make_one_table(reference: Path, tmp_path: Path) -> None:
    for name in (SELFEE_FIRST, CHATGPT_FIRST):
        shutil.copy(reference / "review" / name, tmp_path / name)
        other = name.replace("selfee_13b_enforce_3_revisions", "selfee_7b")
        shutil.copy(reference / "review" / name, tmp_path / other)
    reports = build_report(sorted(tmp_path.glob("*.jsonl")))
    assert len(reports) == 2
    table = format_table(reports)
    assert table.count("chatgpt") >= 2 and "selfee_7b" in table


def test_unparsed_and_failed_judgments_are_left_out_and_counted(
    reference: Path, tmp_path: Path
) -> None:
    rows = [
        json.loads(line) for line in (reference / "review" / SELFEE_FIRST).read_text().splitlines()
    ]
    rows[0]["score"] = [-1, -1]
    rows[1]["metadata"] = {"parsed": False}
    rows[2]["metadata"] = {"error": "RateLimitError: gave up"}
    (tmp_path / SELFEE_FIRST).write_text("".join(json.dumps(r) + "\n" for r in rows))
    shutil.copy(reference / "review" / CHATGPT_FIRST, tmp_path / CHATGPT_FIRST)
    result = build_report([tmp_path / SELFEE_FIRST, tmp_path / CHATGPT_FIRST])[0]
    assert result["unparsed"] == 3 and result["win"] + result["tie"] + result["loss"] == 157
    left_out = sum(rows[i]["score"][0] for i in (1, 2)) + 9.0  # rows[0] was 9 9 before
    assert result["score_a"] == pytest.approx(1359.0 - left_out)


def test_bad_review_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match="FIRST_vs_SECOND"):
        build_report([tmp_path / "reviews.jsonl"])
    with pytest.raises(ReportError, match="does not exist"):
        build_report([tmp_path / "a_vs_b.jsonl"])
    done = selfee("report")
    assert done.returncode == 2 and "--reviews" in done.stderr and "Traceback" not in done.stderr


def published_rows(reference: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (reference / "review" / name).read_text().splitlines()]


def write_rows(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def broken_pairs(reference: Path, tmp: Path) -> dict[str, tuple[list[Path], str]]:
    """Review files that would have printed wrong numbers with exit 0, and what is said."""
    a_rows, b_rows = (
        published_rows(reference, SELFEE_FIRST),
        published_rows(reference, CHATGPT_FIRST),
    )
    a, b = tmp / "ok" / SELFEE_FIRST, tmp / "ok" / CHATGPT_FIRST
    write_rows(a, a_rows), write_rows(b, b_rows)
    shifted = write_rows(
        tmp / "shifted" / CHATGPT_FIRST,
        [{**r, "question_id": r["question_id"] + 1000} for r in b_rows],
    )
    dup = write_rows(tmp / "dup" / SELFEE_FIRST, [*a_rows, a_rows[5]])
    nan = tmp / "nan" / SELFEE_FIRST
    nan.parent.mkdir()
    nan.write_text(
        "".join(json.dumps(r) + "\n" for r in a_rows[:3])
        + json.dumps(a_rows[3]).replace(json.dumps(a_rows[3]["score"]), "[NaN, 7]")
        + "\n"
    )
    other_dir_same_order = write_rows(tmp / "again" / SELFEE_FIRST, a_rows)
    empty_a, empty_b = (
        write_rows(tmp / "empty" / SELFEE_FIRST, []),
        write_rows(tmp / "empty" / CHATGPT_FIRST, []),
    )
    bare = tmp / "bare" / SELFEE_FIRST
    bare.parent.mkdir()
    bare.write_text(json.dumps(a_rows[0]) + "\n42\n")
    return {
        "itself": ([a, a], "is given twice"),
        "no common question": ([a, shifted], "judge different questions (none in common)"),
        "duplicate row": ([dup, b], f"{dup}:81: question 6 is judged again (first on line 6)"),
        "three files": (
            [a, b, other_dir_same_order],
            "both show selfee_13b_enforce_3_revisions's answer first",
        ),
        "NaN score": ([nan, b], f"{nan}:4: the score [nan, 7] is not two numbers"),
        "two empty files": ([empty_a, empty_b], "no judgments to compare"),
        "a bare number": ([bare, b], f"{bare}:2 is not a JSON object (got int)"),
    }


def test_review_files_that_cannot_be_compared_are_refused(reference: Path, tmp_path: Path) -> None:
    for case, (files, message) in broken_pairs(reference, tmp_path).items():
        with pytest.raises(ReportError) as refused:
            build_report(files)
        assert message in str(refused.value), case
        done = selfee("report", "--reviews", *map(str, files))
        assert done.returncode == 2 and message in done.stderr, (case, done.stderr)
        assert "Traceback" not in done.stderr and not done.stdout


def test_a_partial_overlap_compares_the_common_questions_and_says_so(
    reference: Path, tmp_path: Path
) -> None:
    a = write_rows(tmp_path / SELFEE_FIRST, published_rows(reference, SELFEE_FIRST)[:70])
    b = write_rows(tmp_path / CHATGPT_FIRST, published_rows(reference, CHATGPT_FIRST)[10:])
    report = build_report([a, b])[0]
    assert report["questions"] == 60 and report["judgments"] == 120
    assert report["warnings"] == [
        "20 question(s) are judged in one order only and are left out; 60 questions compared"
    ]
    done = selfee("report", "--reviews", str(a), str(b), "--json")
    assert done.returncode == 0 and "warning: 20 question(s)" in done.stderr
    assert json.loads(done.stdout)["judgments"] == 120


def test_the_published_pair_gets_intervals_length_control_and_order_disagreement(
    reference: Path,
) -> None:
    review = reference / "review"
    [r] = build_report([review / SELFEE_FIRST, review / CHATGPT_FIRST],
                       answers=sorted((reference / "answer").glob("*.jsonl")), resamples=1000)  # fmt: skip
    lo, hi = r["relative_percent_ci"]
    assert lo < r["relative_percent"] < hi and hi - lo < 15
    assert r["win_rate"] == pytest.approx((87 + 26 / 2) / 160, abs=1e-4)
    lo, hi = r["win_rate_ci"]
    assert lo < r["win_rate"] < hi
    # SelFee's answers are far longer (333 vs 192 words): at equal length its edge goes away
    assert r["mean_words_a"] > r["mean_words_b"] * 1.5
    assert r["length_controlled_win_rate"] < 0.5 < r["win_rate"]
    assert r["order_disagreement"] == pytest.approx(r["order_flips"] / r["order_pairs"], abs=1e-3)
    table = format_table([r])
    assert "length-controlled win rate" in table and "95% CI" in table


def synthetic_judgments(
    rng, questions: int, length_edge: float, skill: float, length_weight: float = 3.0
) -> list:
    """Two orders per question; A's answers are longer by ``length_edge`` words on average;
    the judge prefers the longer answer, plus ``skill`` (log-odds) for A."""
    from selfee.judge.report import Judgment

    judgments = []
    for q in range(questions):
        words_a = int(max(10, rng.normal(200 + length_edge, 60)))
        words_b = int(max(10, rng.normal(200, 60)))
        for a_first in (True, False):
            logit = skill + length_weight * np.tanh((words_a - words_b) / 80)
            p_win = 1 / (1 + np.exp(-logit))
            won = rng.random() < p_win
            scores = (8.0, 6.0) if won else (6.0, 8.0)
            judgments.append(Judgment(q, "all", a_first, *scores, words_a, words_b))
    return judgments


def test_length_controlled_win_rate_is_near_half_when_judgments_depend_only_on_length() -> None:
    from selfee.judge.report import length_controlled_win_rate, uncertainty

    rng = np.random.default_rng(3)
    judgments = synthetic_judgments(rng, 400, length_edge=80, skill=0.0)
    raw = uncertainty(judgments, resamples=300)
    assert raw["win_rate"] > 0.7  # longer answers win the raw comparison
    assert length_controlled_win_rate(judgments) == pytest.approx(0.5, abs=0.06)
    lo, hi = raw["length_controlled_win_rate_ci"]
    assert lo < 0.5 < hi
    # with real skill and no length edge, the control keeps the advantage
    skilled = synthetic_judgments(rng, 400, length_edge=0, skill=1.0)
    assert length_controlled_win_rate(skilled) == pytest.approx(1 / (1 + np.exp(-1)), abs=0.06)


def test_paired_bootstrap_intervals_cover_the_true_win_rate() -> None:
    from selfee.judge.report import uncertainty

    rng = np.random.default_rng(11)
    truth = 1 / (1 + np.exp(-0.5))  # skill 0.5 decides, length does not
    covered = 0
    for trial in range(60):
        judgments = synthetic_judgments(rng, 80, length_edge=0, skill=0.5, length_weight=0)
        lo, hi = uncertainty(judgments, resamples=400, seed=trial)["win_rate_ci"]
        covered += lo <= truth <= hi
    assert covered / 60 >= 0.85
